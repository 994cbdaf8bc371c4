"""DPO, GRPO and distillation through the real CLI on the real embedded SmolLM2, each moving the metric it optimises.

Runs are a handful of steps (2-core CPU); the figures they produce are recorded in docs/methods.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "src" / "tunesmith" / "demo" / "data" / "train.jsonl"


def tunesmith(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if res.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture
def env(smollm2_env):
    return smollm2_env


def demo_rows() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe(tmp_path: Path, **body) -> Path:
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump({"output_dir": f"runs/{body['name']}", **body}), encoding="utf-8")
    return path


def test_dpo_moves_the_reward_margin(tmp_path, env):
    pref = [json.loads(line) for line in (ROOT / "configs" / "data" / "tickets-preference.jsonl").read_text().splitlines()]
    write(tmp_path / "pref.jsonl", pref[:24])
    write(tmp_path / "pref-eval.jsonl", pref[48:52])
    path = recipe(
        tmp_path,
        name="dpo",
        method="dpo",
        data={"train": ["pref.jsonl"], "eval": "pref-eval.jsonl", "max_length": 320},
        dpo={"beta": 0.1},
        training={"max_steps": 3, "batch_size": 4, "learning_rate": 1e-4, "logging_steps": 1},
    )
    out = tunesmith("train", str(path), env=env, cwd=tmp_path)
    assert "eval reward margin" in out.stdout
    manifest = json.loads((tmp_path / "runs" / "dpo" / "manifest.json").read_text())
    # Before training the policy IS the reference: margin 0, loss ln 2. Training must move both on held-out pairs.
    final = manifest["details"]["final_eval"]  # the method's own record
    assert final["rewards/margins"] > 0.05 and final["rewards/accuracies"] >= 0.75
    assert manifest["figures"]["eval_loss"] < math.log(2)


RECORDER = '''
import json, os
from tunesmith.train.rewards import completion_text, json_valid

def record(prompts, completions, **kw):
    """Weight-0 reward that keeps every sampled completion and its JSON validity, for the test to re-score."""
    with open(os.environ["GRPO_SAMPLES"], "a") as fh:
        for p, c, v in zip(prompts, completions, json_valid(prompts, completions)):
            fh.write(json.dumps({"prompt": p, "completion": completion_text(c), "valid": v}) + "\\n")
    return [0.0] * len(completions)
'''


def _mean_logprob(model, tokenizer, samples: list[dict]) -> float:
    """Mean per-token log-probability of each completion given its prompt, averaged over samples."""
    import torch

    from tunesmith.data.template import render_prompt

    values = []
    for s in samples:
        prompt = tokenizer(render_prompt(tokenizer, s["prompt"]), add_special_tokens=False)["input_ids"]
        completion = tokenizer(s["completion"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + completion])
        with torch.inference_mode():
            logp = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        values.append(logp.gather(-1, torch.tensor(completion)[:, None]).mean().item())
    return sum(values) / len(values)


def test_grpo_makes_json_valid_samples_likelier(tmp_path, env):
    rows = demo_rows()
    shot = rows[0]["messages"]  # one worked example in the prompt, so some samples are valid JSON from the start
    write(
        tmp_path / "prompts.jsonl",
        [{"prompt": shot + r["messages"][1:2], "reference": r["messages"][2]["content"]} for r in rows[1:41]],
    )
    (tmp_path / "recorder.py").write_text(RECORDER)
    samples = tmp_path / "samples.jsonl"
    path = recipe(
        tmp_path,
        name="grpo",
        method="grpo",
        data={"train": ["prompts.jsonl"], "max_length": 512},
        grpo={
            "rewards": ["json_valid", {"type": "custom", "function": "recorder:record", "weight": 0.0}],
            "num_generations": 4,
            "max_completion_length": 64,
        },
        training={"max_steps": 3, "batch_size": 4, "learning_rate": 3e-4, "logging_steps": 1, "warmup_ratio": 0.0},
    )
    tunesmith("train", str(path), env={**env, "GRPO_SAMPLES": str(samples)}, cwd=tmp_path)
    run_dir = tmp_path / "runs" / "grpo"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "reward" in r]
    assert len(steps) == 3 and all("reward_std" in r and "rewards/json_valid/mean" in r for r in steps)

    # What GRPO optimises: completions that scored above their group become likelier, the others less likely.
    # Re-score the very samples it trained on with the base (adapter off) and the tuned policy.
    drawn = [json.loads(line) for line in samples.read_text().splitlines()]
    valid, invalid = [s for s in drawn if s["valid"]], [s for s in drawn if not s["valid"]]
    assert valid and invalid, "the prompts must give a mix of valid and invalid JSON samples"
    from peft import PeftModel

    from tunesmith import models

    base_path = json.loads((run_dir / "manifest.json").read_text())["base_model"]["path"]
    tokenizer = models.load_tokenizer(base_path)
    model = PeftModel.from_pretrained(models.load_model(base_path, "float32"), str(run_dir / "adapter")).eval()
    with model.disable_adapter():
        base_gap = _mean_logprob(model, tokenizer, valid) - _mean_logprob(model, tokenizer, invalid)
    tuned_gap = _mean_logprob(model, tokenizer, valid) - _mean_logprob(model, tokenizer, invalid)
    assert tuned_gap > base_gap


def test_distill_student_agrees_more_with_its_teacher(tmp_path, env):
    rows = demo_rows()
    write(tmp_path / "sft.jsonl", rows[100:180])
    teacher = recipe(
        tmp_path,
        name="teacher",
        data={"train": ["sft.jsonl"], "max_length": 384},
        training={"max_steps": 3, "batch_size": 4, "learning_rate": 5e-4, "logging_steps": 2},
    )
    tunesmith("train", str(teacher), env=env, cwd=tmp_path)

    write(tmp_path / "prompts.jsonl", [{"prompt": r["messages"][:2]} for r in rows[200:220]])
    student = recipe(
        tmp_path,
        name="student",
        method="distill",
        data={"train": ["prompts.jsonl"], "max_length": 384, "eval_fraction": 0.2},
        distill={"teacher": "runs/teacher", "max_new_tokens": 64, "batch_size": 12},
        training={"max_steps": 4, "batch_size": 4, "learning_rate": 5e-4, "logging_steps": 2},
        eval={"max_new_tokens": 64, "batch_size": 4},
    )
    out = tunesmith("train", str(student), env=env, cwd=tmp_path)
    assert "teacher: run" in out.stdout
    run_dir = tmp_path / "runs" / "student"
    generated = [json.loads(line) for line in (run_dir / "distill" / "train.jsonl").read_text().splitlines()]
    assert len(generated) == 16 and json.loads((run_dir / "distill" / "audit.json").read_text())["ok"]

    tunesmith("eval", str(student), "--max-examples", "4", env=env, cwd=tmp_path)
    summary = json.loads((run_dir / "eval" / "report.json").read_text())["summary"]
    # References are the teacher's answers: the student must find them likelier than the untouched base does.
    assert summary["tuned"]["eval_loss"] < summary["base"]["eval_loss"]
