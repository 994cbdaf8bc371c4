"""False-positive rate and power of the monitor's MMD input-drift test, per embedder, and the time one test takes.

Unshifted: two seeded samples of the same support-question templates; shifted: other tasks (poems, translation,
history). Prints one row per embedder: FPR and power at alpha, seconds per test (embedding included).

    .venv/bin/python bench/monitor_drift.py --repeats 100 --n 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / sub) for sub in ("unit", "")]

from test_monitor import prompts  # noqa: E402  (the synthetic traffic the tests use)

from tunesmith.monitor import drift  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--n", type=int, default=50, help="prompts per side")
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    from tunesmith.rag.embed import load_embedder

    print(f"{'embedder':<12} {'n':>4} {'repeats':>7} {'FPR':>6} {'power':>6} {'s/test':>7}")
    for embedder in (drift.CharNgramEmbedder(), load_embedder(None)):
        false_pos = hits = 0
        start = time.perf_counter()
        for i in range(args.repeats):
            ref = embedder.encode(prompts(args.n, 1000 + i))
            same = embedder.encode(prompts(args.n, 5000 + i))
            other = embedder.encode(prompts(args.n, 9000 + i, shifted=True))
            false_pos += drift.mmd_test(ref, same, args.permutations, seed=i).p_value < args.alpha
            hits += drift.mmd_test(ref, other, args.permutations, seed=i).p_value < args.alpha
        per_test = (time.perf_counter() - start) / (2 * args.repeats)
        print(
            f"{embedder.name:<12} {args.n:>4} {args.repeats:>7} {false_pos / args.repeats:>6.3f} "
            f"{hits / args.repeats:>6.3f} {per_test:>7.3f}"
        )


if __name__ == "__main__":
    main()
