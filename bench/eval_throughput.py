"""Generated tokens/s of tunesmith.eval.generate: one batch of N prompts vs the same prompts one at a time.

    .venv/bin/python bench/eval_throughput.py [--prompts 16] [--max-new-tokens 72] [--dtype auto|float32|bfloat16] [--run RUN_DIR]

Prompts are the demo task's held-out rows, greedy, on the embedded SmolLM2-135M. Both sides generate the same
tokens (greedy, left-padded batches stop when every row has closed its turn), so tokens/s compares like with
like. With --run, also times `tunesmith eval`'s evaluate() on that run (base + tuned from one loaded model).
The load average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

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
    ns = p.parse_args()

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
        from tunesmith.eval.compare import evaluate
        from tunesmith.run import load_run

        started = time.perf_counter()
        evaluate(load_run(ns.run))
        print(f"  tunesmith eval on {ns.run}: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
