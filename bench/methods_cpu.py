"""CPU time of each training method x adapter: a few steps on a tiny random Llama, or on SmolLM2 with --smollm2.

    .venv/bin/python bench/methods_cpu.py             # tiny model, every pair, seconds each
    .venv/bin/python bench/methods_cpu.py --smollm2   # the embedded SmolLM2-135M, 4 steps per method
    .venv/bin/python bench/methods_cpu.py --levers    # SFT, DPO, GRPO with speed.shared_prefix off and on

Prints one row per run: wall seconds, process CPU seconds (all threads), optimizer steps, process max RSS so far.
With --levers the rows carry a shared system prompt and each of SFT, DPO and GRPO (LoRA) runs with speed.shared_prefix
off and on (fp32): the tokens the compacted forwards did not run (shared prefixes and padding), and the largest
relative difference of the logged losses between the two runs (their parity).
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


SYSTEM = 'You are a careful calculator. Add the two numbers the user gives and reply with one line of JSON: {"sum": n}.'


def data(work: Path, system: bool = False) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(32):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            [{"role": "system", "content": SYSTEM}] * system
            + [{"role": "user", "content": f"Add {a} and {b}."}, {"role": "assistant", "content": json.dumps({"sum": a + b})}]
        )
    write = lambda name, items: (work / name).write_text("".join(json.dumps(x) + "\n" for x in items))  # noqa: E731
    write("sft.jsonl", [{"messages": m} for m in rows])
    write(
        "pref.jsonl", [{"prompt": m[:-1], "chosen": m[-1:], "rejected": [{"role": "assistant", "content": "no"}]} for m in rows]
    )
    write("prompts.jsonl", [{"prompt": m[:-1], "reference": m[-1]["content"]} for m in rows])


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


def lever_rows(work: Path, base: str, steps: int) -> None:
    """SFT, DPO and GRPO (LoRA, fp32) with speed.shared_prefix off, then on: time, tokens not run, loss parity."""
    from tunesmith.config import recipe_from_dict
    from tunesmith.run import read_metrics
    from tunesmith.train import compact
    from tunesmith.train.entry import run

    saved: list[int] = []
    layout = compact.layout

    def counting(*args, **kwargs):
        lay = layout(*args, **kwargs)
        saved.append(lay.saved if lay is not None else 0)
        return lay

    compact.layout = counting
    print(
        f"{'method':8} {'shared_prefix':13} {'wall_s':>7} {'cpu_s':>7} {'forwards':>8} {'tokens_not_run':>14} {'loss_parity':>11}"
    )
    for method in ("sft", "dpo", "grpo"):
        losses = {}
        for shared in (False, True):
            body = recipe(work, base, base, method, "lora", steps)
            body["name"] = body["output_dir"] = f"levers-{method}-{shared}"
            body["speed"] = {"precision": "fp32", "shared_prefix": shared}
            saved.clear()
            wall, cpu = time.time(), time.process_time()
            result = run(recipe_from_dict(body, work))
            wall, cpu = time.time() - wall, time.process_time() - cpu
            losses[shared] = [m["loss"] for m in read_metrics(result.dir) if "loss" in m and "eval_loss" not in m]
            parity = ""
            if shared:
                parity = f"{max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(losses[False], losses[True])):.1e}"
            print(f"{method:8} {str(shared):13} {wall:7.1f} {cpu:7.1f} {len(saved):8d} {sum(saved):14d} {parity:>11}", flush=True)
    compact.layout = layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", action="store_true", help="use the embedded SmolLM2-135M instead of a tiny model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated method:adapter pairs, e.g. sft:lora,grpo:lora")
    parser.add_argument("--levers", action="store_true", help="SFT, DPO and GRPO with speed.shared_prefix off and on")
    args = parser.parse_args()
    from tunesmith.config import recipe_from_dict
    from tunesmith.train.entry import run

    work = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    data(work, system=args.levers)
    if args.smollm2:
        base = teacher = "smollm2-135m-instruct"
    else:
        base, teacher = str(tiny_model(work / "tiny")), str(tiny_model(work / "teacher", hidden=64))
    if args.levers:
        return lever_rows(work, base, args.steps)
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
