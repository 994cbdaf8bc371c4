"""Benchmark: wall time of each ladder rung on the bundled demo (SmolLM2-135M, the demo's recipe).

Usage: python bench/ladder_time.py DEMO_DIR [--max-examples N] [--rungs base,base_rag,...]
DEMO_DIR is a folder made by `tunesmith demo --dir DEMO_DIR` (its trained run is the tuned rung). Prints the
retrieval time, then per rung: generation seconds, p50/p95 latency per request and tokens per request.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--max-examples", type=int, default=None, help="Prompts per rung (default: ladder.max_examples).")
    parser.add_argument("--rungs", default=None, help="Comma-separated rungs (default: the recipe's ladder.rungs).")
    args = parser.parse_args()

    from tunesmith.config import load_recipe
    from tunesmith.eval.ladder import ladder_inputs, run_ladder

    overrides = [f"ladder.rungs=[{args.rungs}]"] if args.rungs else []
    recipe = load_recipe(args.demo_dir / "recipe.yaml", overrides)
    started = time.perf_counter()
    inputs = ladder_inputs(recipe, args.max_examples)
    print(f"prompts + retrieval for {len(inputs.convs)} prompts: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    report, _ = run_ladder(recipe, max_examples=args.max_examples)
    total = time.perf_counter() - started
    print(f"{'rung':<18}{'gen s':>8}{'p50 ms':>9}{'p95 ms':>9}{'prompt tok':>12}{'compl tok':>11}{'exact':>7}{'valid':>7}")
    for r in report.rungs:
        if r.status != "ok":
            print(f"{r.label:<18} skipped: {r.reason}")
            continue
        print(
            f"{r.label:<18}{r.generation_s:>8.1f}{r.p50_latency_ms:>9.0f}{r.p95_latency_ms:>9.0f}{r.prompt_tokens:>12.0f}"
            f"{r.completion_tokens:>11.0f}{r.metrics['exact_match']:>7.2f}{r.metrics.get('json_valid', 0):>7.2f}"
        )
    print(f"whole ladder (model load, retrieval, every rung): {total:.1f} s on {report.device}")


if __name__ == "__main__":
    main()
