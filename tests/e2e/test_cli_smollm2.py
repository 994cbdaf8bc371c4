"""The real CLI, as a user runs it, on the real embedded SmolLM2 (a few steps)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def tunesmith(*args: str, env: dict, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if check and res.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("tunesmith-home")
    return {**os.environ, "TUNESMITH_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def test_pipeline_end_to_end(tmp_path, env):
    pull = tunesmith("models", "pull", "smollm2-135m-instruct", env=env, cwd=tmp_path)
    model_dir = Path(env["TUNESMITH_HOME"]) / "models" / "smollm2-135m-instruct"
    assert "ready" in pull.stdout and (model_dir / "model.safetensors").exists()
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (model_dir / "chat_template.jinja").exists() or "chat_template" in (model_dir / "tokenizer_config.json").read_text()

    tunesmith("init", "proj", env=env, cwd=tmp_path)
    recipe = tmp_path / "proj" / "recipe.yaml"
    assert "# Peak learning rate." in recipe.read_text()

    train = tunesmith(
        "train", str(recipe), "--set", "training.max_steps=2", "--set", "training.save_steps=1", env=env, cwd=tmp_path
    )
    run_dir = tmp_path / "proj" / "runs" / "demo"
    assert "trained" in train.stdout and (run_dir / "adapter" / "adapter_model.safetensors").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["figures"]["global_step"] == 2 and manifest["tokens"]["train"]["kept"] == 400

    ev = tunesmith("eval", str(recipe), "--max-examples", "3", env=env, cwd=tmp_path, check=False)
    assert "base vs tuned" in ev.stdout and "exact_match" in ev.stdout
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    failed = [g["name"] for g in report["gates"] if g["status"] == "fail"]  # two steps rarely pass the recipe's gates
    assert ev.returncode == (3 if failed else 0), ev.stderr
    assert all(f"FAIL {name}" in ev.stdout for name in failed)
    assert report["n_examples"] == 3 and report["json_mode"] is True
    preds = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and {"id", "prompt", "reference", "base", "tuned"} <= set(preds[0])
    assert "<img" in (run_dir / "eval" / "report.html").read_text()

    merged = tunesmith("merge", str(run_dir), "--out", str(tmp_path / "merged"), env=env, cwd=tmp_path)
    assert "identical on 3/3" in merged.stdout

    chat = tunesmith(
        "chat",
        str(run_dir),
        "--prompt",
        "Hi, Ann Lee here. My VoltCharge 65W never arrived, I paid $40. Urgent!",
        "--max-new-tokens",
        "40",
        env=env,
        cwd=tmp_path,
    )
    assert chat.stdout.strip()


def test_serve_smollm2_with_the_openai_client(tmp_path, smollm2_env):
    """`tunesmith serve` on the real SmolLM2, spoken to by the official openai client: models, chat, streaming, errors."""
    import time

    import httpx
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tunesmith", "serve", "smollm2-135m-instruct", "--port", str(port)]
    cmd += ["--dir", str(tmp_path / "serve"), "--api-key", "e2e-key"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=smollm2_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert httpx.get(url + "/health", timeout=5).status_code == 200, (tmp_path / "serve.log").read_text()
        client = openai.OpenAI(base_url=url + "/v1", api_key="e2e-key")
        names = [m.id for m in client.models.list().data]
        assert len(names) == 1
        ask = [{"role": "user", "content": "Hi, Ann Lee here. My VoltCharge 65W never arrived, I paid $40. Urgent!"}]
        reply = client.chat.completions.create(model=names[0], messages=ask, max_tokens=12, temperature=0)
        assert reply.choices[0].message.content and reply.usage.completion_tokens <= 12
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(model=names[0], messages=ask, max_tokens=12, temperature=0, stream=True)
            if chunk.choices
        )
        assert streamed == reply.choices[0].message.content  # greedy: the stream carries the same answer
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong").models.list()
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=ask, max_tokens=4)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    assert (tmp_path / "serve" / "requests.sqlite").exists()


def test_bad_recipe_is_one_error_without_traceback(tmp_path, env):
    (tmp_path / "r.yaml").write_text("data: {train: [nope.jsonl]}\ntraining: {learning_rate: 5, epochs: 0}\nadaptor: {r: 8}\n")
    res = tunesmith("train", str(tmp_path / "r.yaml"), env=env, cwd=tmp_path, check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    for field in ("data.train.0", "training.learning_rate", "training.epochs", "adaptor"):
        assert field in res.stderr
    assert res.stderr.count("error:") == 1
