"""`tunesmith data` through the real CLI, with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "tiger",
    "violet",
    "ocean",
    "amber",
    "cedar",
    "falcon",
    "harbor",
    "lemon",
    "meadow",
    "nickel",
    "orbit",
]


def tunesmith(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def row(i: int) -> dict:
    return {
        "id": i,
        "label": ["refund", "track", "other"][i % 3],
        "messages": [
            {"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": f"Ticket {i}: where is my {WORDS[i % len(WORDS)]} order number {i * 13}?"},
            {"role": "assistant", "content": json.dumps({"ticket": i, "intent": ["refund", "track", "other"][i % 3]})},
        ],
    }


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def env(smollm2_env):
    return smollm2_env


def test_check_clean_corrupt_and_unreadable(tmp_path, env):
    clean = write(tmp_path / "clean.jsonl", [row(i) for i in range(60)])
    res = tunesmith(
        "data",
        "check",
        str(clean),
        "--json",
        "--label-field",
        "label",
        "--gpu",
        "a100",
        "--price-per-hour",
        "2",
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["findings"] == []
    tokens = report["stats"]["tokens"]
    assert tokens["total_tokens"]["min"] > tokens["assistant_tokens"]["max"] > 0
    cost = report["stats"]["cost"]
    assert (
        cost["epochs"] == 3 and cost["gpu"]["device"] == "a100" and cost["gpu"]["price_per_hour"] == 2.0 and cost["params"] > 1e8
    )

    bad = [row(i) for i in range(60)]
    bad[9] = "{not json"
    bad[20]["messages"][1]["role"] = "robot"
    bad.append(row(5))
    corrupt = write(tmp_path / "corrupt.jsonl", bad)
    html = tmp_path / "report.html"
    res = tunesmith("data", "check", str(corrupt), "--html", str(html), env=env, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    for text in (
        "invalid_json",
        f"{corrupt}:10",
        "unrecognized_role",
        f"{corrupt}:21 message 1",
        "exact_duplicate",
        "2 blocking error(s)",
        "tokens (chat template applied)",
        "h100",
    ):
        assert text in res.stdout, text
    assert html.read_text().count("data:image/png;base64,") == 2

    assert tunesmith("data", "check", str(tmp_path / "nope.jsonl"), "--no-tokens", env=env, cwd=tmp_path).returncode == 2
    strict = tunesmith("data", "check", str(clean), "--strict", "--no-tokens", "--max-length", "64", env=env, cwd=tmp_path)
    assert strict.returncode == 0

    fixed = tmp_path / "fixed.jsonl"
    res = tunesmith("data", "fix", str(corrupt), "--out", str(fixed), env=env, cwd=tmp_path)
    assert res.returncode == 0 and "58 of 61 rows kept" in res.stdout and "dropped [invalid_json]" in res.stdout
    assert tunesmith("data", "check", str(fixed), env=env, cwd=tmp_path).returncode == 0


def test_show_split_convert(tmp_path, env):
    src = write(tmp_path / "d.jsonl", [row(i) for i in range(40)])
    res = tunesmith("data", "show", str(src), "--row", "2", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "<|im_start|>assistant" in res.stdout and "EOS trained: True" in res.stdout
    assert "trained (between [[ and ]])" in res.stdout and "<|im_start|>assistant\n[[" in res.stdout  # not a terminal

    res = tunesmith("data", "split", str(src), "--eval", "0.25", "--seed", "3", "--stratify", "label", env=env, cwd=tmp_path)
    assert res.returncode == 0 and "label=refund" in res.stdout
    assert len((tmp_path / "d.eval.jsonl").read_text().splitlines()) == 10

    res = tunesmith("data", "convert", str(src), "--to", "sharegpt", "--out", str(tmp_path / "s.parquet"), env=env, cwd=tmp_path)
    assert res.returncode == 0 and "40 rows as sharegpt" in res.stdout


def test_train_refuses_bad_data_before_loading_the_model(tmp_path, env):
    assert tunesmith("init", "proj", env=env, cwd=tmp_path).returncode == 0
    train = next((tmp_path / "proj").rglob("train*.jsonl"))
    with open(train, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}) + "\n")
    res = tunesmith("train", str(tmp_path / "proj" / "recipe.yaml"), env=env, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "empty_assistant_content" in res.stderr and "--force" in res.stderr


def test_synth_reports_rejections(tmp_path, env):
    seeds = write(tmp_path / "seeds.jsonl", [row(i) for i in range(8)])
    out = tmp_path / "synth.jsonl"
    res = tunesmith(
        "data",
        "synth",
        "--seed-file",
        str(seeds),
        "--model",
        "smollm2-135m-instruct",
        "--n",
        "2",
        "--out",
        str(out),
        "--max-new-tokens",
        "64",
        "--max-attempts",
        "2",
        "--batch-size",
        "2",
        env=env,
        cwd=tmp_path,
    )
    assert "synth: 2 candidates" in res.stdout, res.stderr
    if res.returncode == 1:  # a 135M model may write no valid row: said so, and no file is written
        assert "none of 2 candidates passed validation" in res.stderr and not out.exists()
        return
    assert res.returncode == 0 and out.exists(), res.stderr
    accepted = len(out.read_text().splitlines())
    assert f"{accepted} of 2 requested" in res.stdout
