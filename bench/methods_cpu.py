"""CPU time of each training method x adapter: a few steps on a tiny random Llama, or on SmolLM2 with --smollm2.

    .venv/bin/python bench/methods_cpu.py             # tiny model, every pair, seconds each
    .venv/bin/python bench/methods_cpu.py --smollm2   # the embedded SmolLM2-135M, 4 steps per method

Prints one row per run: wall seconds, process CPU seconds (all threads), optimizer steps, process max RSS so far.
The tiny model is 64 wide because bitsandbytes' CPU 4-bit kernels need output widths of at least 32.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("sft", "lora"),
    ("sft", "dora"),
    ("sft", "qlora"),
    ("sft", "full"),
    ("sft", "prompt_tuning"),
    ("sft", "lora+top1"),
    ("dpo", "lora"),
    ("dpo", "full"),
    ("grpo", "lora"),
    ("distill", "lora/sequence"),
    ("distill", "lora/logits"),
]


def tiny_model(out: Path, hidden: int = 64) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import save_tiny_llama  # the tests' tiny Llama, wider

    return save_tiny_llama(out, hidden)


def data(work: Path) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(32):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            [{"role": "user", "content": f"Add {a} and {b}."}, {"role": "assistant", "content": json.dumps({"sum": a + b})}]
        )
    write = lambda name, items: (work / name).write_text("".join(json.dumps(x) + "\n" for x in items))  # noqa: E731
    write("sft.jsonl", [{"messages": m} for m in rows])
    write("pref.jsonl", [{"prompt": m[:1], "chosen": m[1:], "rejected": [{"role": "assistant", "content": "no"}]} for m in rows])
    write("prompts.jsonl", [{"prompt": m[:1], "reference": m[1]["content"]} for m in rows])


def recipe(work: Path, base: str, teacher: str, method: str, adapter: str, steps: int) -> dict:
    kind, _, variant = adapter.partition("/")
    body = {
        "name": f"{method}-{adapter}".replace("/", "-").replace("+", "-"),
        "method": method,
        "model": {"base": base},
        "data": {"train": ["sft.jsonl"], "max_length": 256},
        "adapter": {"type": kind.split("+")[0], "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": 4, "logging_steps": 1, "save_steps": 1000},
    }
    body["output_dir"] = f"runs/{body['name']}"
    if "+top1" in kind:
        body["training"]["unfreeze_top_layers"] = 1
    if method == "dpo":
        body["data"]["train"] = ["pref.jsonl"]
    if method == "grpo":
        body["data"]["train"] = ["prompts.jsonl"]
        body["grpo"] = {"rewards": ["json_valid"], "num_generations": 4, "max_completion_length": 32}
    if method == "distill":
        body["data"]["train"] = ["prompts.jsonl"] if variant == "sequence" else ["sft.jsonl"]
        body["distill"] = {"teacher": teacher, "mode": variant, "max_new_tokens": 32}
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", action="store_true", help="use the embedded SmolLM2-135M instead of a tiny model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated method:adapter pairs, e.g. sft:lora,grpo:lora")
    args = parser.parse_args()
    from tunesmith.config import recipe_from_dict
    from tunesmith.train import run

    work = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    data(work)
    if args.smollm2:
        base = teacher = "smollm2-135m-instruct"
    else:
        base, teacher = str(tiny_model(work / "tiny")), str(tiny_model(work / "teacher", hidden=64))
    wanted = {tuple(p.split(":")) for p in args.only.split(",") if p}
    print(f"{'method':8} {'adapter':16} {'wall_s':>7} {'cpu_s':>7} {'steps':>5} {'max_rss_mb':>10}")
    for method, adapter in PAIRS:
        if wanted and (method, adapter) not in wanted:
            continue
        rec = recipe_from_dict(recipe(work, base, teacher, method, adapter, args.steps), work)
        wall, cpu = time.time(), time.process_time()
        result = run(rec)
        wall, cpu = time.time() - wall, time.process_time() - cpu
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{method:8} {adapter:16} {wall:7.1f} {cpu:7.1f} {result.manifest.figures.global_step:5d} {rss:10.0f}",
            flush=True,
        )
    print(f"(runs in {work}; device {sys.platform}, torch threads: {__import__('torch').get_num_threads()})")


if __name__ == "__main__":
    main()
