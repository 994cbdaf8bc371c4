"""Generated tokens/s of tunesmith.eval.generate: one batch of N prompts vs the same prompts one at a time.

    .venv/bin/python bench/eval_throughput.py [--prompts 16] [--max-new-tokens 72] [--dtype auto|float32|bfloat16] [--run RUN_DIR]
        [--simulate-avx2]

Prompts are the demo task's held-out rows, greedy, on the embedded SmolLM2-135M. Both sides generate the same
tokens (greedy, left-padded batches stop when every row has closed its turn), so tokens/s compares like with
like. With --run, also times `tunesmith eval`'s evaluate() on that run (base + tuned from one loaded model).
The load average is printed: the machine may be shared. The hardware line (train/hardware.py) and the 1024x1024
matmul rates are printed first; --simulate-avx2 reruns this script with oneDNN, MKL and torch's kernels capped at
AVX2 (a CPU without bf16 units, simulated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tunesmith.train.hardware import SIMULATED_AVX2

DEMO = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "demo" / "data"


def timed(model, tok, convs, max_new, batch):
    from tunesmith.eval.generate import generate_detailed

    started = time.perf_counter()
    out = generate_detailed(model, tok, convs, max_new, batch_size=batch)
    seconds = time.perf_counter() - started
    return out, seconds, sum(c.completion_tokens for c in out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=72)
    p.add_argument("--run", help="a trained run folder: also time the whole evaluation")
    p.add_argument("--dtype", default="auto", help="weights dtype for the generation figures (auto: what eval loads)")
    p.add_argument("--simulate-avx2", action="store_true", help="cap the kernels at AVX2: a CPU without bf16 units")
    ns = p.parse_args()
    if ns.simulate_avx2 and any(os.environ.get(k) != v for k, v in SIMULATED_AVX2.items()):
        # the caps apply when torch loads: run again in a process that starts with them
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **SIMULATED_AVX2})
    from tunesmith.train import hardware

    print("hardware:", hardware.hardware_line(hardware.describe()))
    rates = {dt: hardware.gemm_gflops(dt, seconds=0.5) for dt in ("float32", "bfloat16")}
    print(f"matmul 1024x1024: fp32 {rates['float32']:.1f} GFLOP/s, bf16 {rates['bfloat16']:.1f} GFLOP/s", flush=True)

    from tunesmith import models
    from tunesmith.data.template import prompt_messages

    path = models.resolve_base("smollm2-135m-instruct")
    model, tok = models.load_model(path, ns.dtype).eval(), models.load_tokenizer(path)
    rows = [json.loads(x)["messages"] for x in (DEMO / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    convs = [prompt_messages(m) for m in rows[: ns.prompts]]
    timed(model, tok, convs[:2], 4, 2)  # warm-up
    load = os.getloadavg()[0]
    batched, t_b, n_b = timed(model, tok, convs, ns.max_new_tokens, ns.prompts)
    single, t_s, n_s = timed(model, tok, convs, ns.max_new_tokens, 1)
    same = sum(a.token_ids == b.token_ids for a, b in zip(batched, single))
    print(
        f"{ns.prompts} prompts, max_new_tokens {ns.max_new_tokens}, {model.dtype}, load average {load:.2f} -> {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    print(f"  batch {ns.prompts}: {n_b} tokens in {t_b:.1f} s = {n_b / t_b:.1f} tok/s")
    print(f"  one at a time: {n_s} tokens in {t_s:.1f} s = {n_s / t_s:.1f} tok/s")
    print(f"  speed-up {n_b / t_b / (n_s / t_s):.2f}x; identical greedy outputs {same}/{len(convs)}")
    if ns.run:
        from tunesmith.run import load_run
        from tunesmith.train.methods import evaluate

        started = time.perf_counter()
        evaluate(load_run(ns.run))
        print(f"  tunesmith eval on {ns.run}: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
