"""Does GRPO raise the JSON-valid reward on the demo task? GRPO on the embedded SmolLM2, then base vs tuned.

    .venv/bin/python bench/grpo_reward.py [--steps 16] [--prompts 48] [--eval 16]

Prompts are the bundled demo task's support messages with one worked example in front (zero-shot, the base
never writes JSON, so every group scores 0 and GRPO has nothing to learn from). Rewards: json_valid, plus
exact_match against the reference ticket at weight 0.5. Prints the mean reward per step, then the held-out
comparison of `tunesmith eval` (greedy): JSON-valid rate, field accuracy and exact match, base vs tuned.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "tunesmith" / "demo" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()

    from tunesmith.config import recipe_from_dict
    from tunesmith.run import read_metrics
    from tunesmith.train.entry import run
    from tunesmith.train.methods import evaluate

    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    held = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    shot = rows[0]["messages"]  # system, user, assistant: one worked example

    def prompt_row(r: dict) -> dict:
        return {"prompt": shot + [m for m in r["messages"] if m["role"] == "user"][:1], "reference": r["messages"][-1]["content"]}

    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    for name, items in (("train.jsonl", rows[1 : 1 + args.prompts]), ("eval.jsonl", held[: args.eval])):
        (work / name).write_text("".join(json.dumps(prompt_row(r)) + "\n" for r in items), encoding="utf-8")
    recipe = recipe_from_dict(
        {
            "name": "grpo-bench",
            "method": "grpo",
            "output_dir": "runs/grpo",
            "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 768},
            "adapter": {"r": 16, "alpha": 32},
            "grpo": {
                "rewards": ["json_valid", {"type": "exact_match", "weight": 0.5}],
                "num_generations": 4,
                "max_completion_length": 72,
            },
            "training": {
                "max_steps": args.steps,
                "batch_size": 8,
                "learning_rate": args.lr,
                "logging_steps": 1,
                "warmup_ratio": 0.0,
                "save_steps": 1000,
            },
            "eval": {"max_new_tokens": 72, "batch_size": 8},
        },
        work,
    )

    started = time.time()
    result = run(recipe)
    trained = time.time() - started
    print(f"{'step':>4} {'reward':>7} {'json_valid':>10} {'exact':>6}")
    for r in read_metrics(result.dir):
        if "reward" in r:
            print(
                f"{r['step']:4d} {r['reward']:7.3f} {r.get('rewards/json_valid/mean', float('nan')):10.3f} "
                f"{r.get('rewards/exact_match/mean', float('nan')):6.3f}"
            )
    started = time.time()
    report = evaluate(result, max_examples=args.eval)
    s = report.summary
    print(f"\nheld-out ({args.eval} one-shot prompts, greedy): metric base -> tuned")
    for key in ("json_valid", "json_field_accuracy", "exact_match"):
        if key in s["base"]:
            print(f"  {key:20} {s['base'][key]:.3f} -> {s['tuned'][key]:.3f}")
    print(
        f"train {trained:.0f}s ({args.steps} steps x 2 prompts x 4 samples), eval {time.time() - started:.0f}s; run in {result.dir}"
    )


if __name__ == "__main__":
    main()
