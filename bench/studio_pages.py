"""Benchmark: studio page load times with 200 runs and a 5,000-example eval report.

Usage: python bench/studio_pages.py [--runs 200] [--examples 5000] [--repeat 20]
Builds the run folders in a temp dir (typed records, as `train` and `eval` write them), then times each
page through the ASGI app in-process (no network): the first (cold) load and the median of --repeat warm
loads, in milliseconds. The target is under 300 ms per page.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # studio_helpers: the same run folders the tests use

TARGET_MS = 300.0


def build(root: Path, n_runs: int, n_examples: int) -> None:
    from studio_helpers import fake_run

    fake_run(root, "big-report", n_examples=n_examples, seed=1)
    for i in range(n_runs - 1):
        fake_run(root, f"run-{i:03d}", n_examples=20, seed=i, finished=i % 10 != 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from tunesmith.studio.app import StudioConfig, create_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        t0 = time.perf_counter()
        build(root, args.runs, args.examples)
        print(f"built {args.runs} runs and a {args.examples}-example report in {time.perf_counter() - t0:.1f} s")
        client = TestClient(create_app(StudioConfig(runs=[root])), base_url="http://127.0.0.1:7860")
        client.get("/healthz")  # app start-up is not a page load
        k = "0/big-report"
        pages = {
            "runs list (/)": "/",
            "run page": f"/run?k={k}",
            "report page 1": f"/report?k={k}",
            "report page 60": f"/report?k={k}&page_no=60",
            "report losses only": f"/report?k={k}&losses=true",
            "report worse on exact_match": f"/report?k={k}&metric=exact_match",
            "review home": f"/review?k={k}",
            "launch": "/launch",
        }
        print(f"{'page':32} {'cold ms':>9} {'warm median ms':>15} {'warm max ms':>12}")
        worst = 0.0
        for name, url in pages.items():
            t = time.perf_counter()
            assert client.get(url).status_code == 200, url
            cold = (time.perf_counter() - t) * 1000
            warm = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                client.get(url)
                warm.append((time.perf_counter() - t) * 1000)
            worst = max(worst, statistics.median(warm))
            print(f"{name:32} {cold:9.1f} {statistics.median(warm):15.1f} {max(warm):12.1f}")
        verdict = "within" if worst < TARGET_MS else "OVER"
        print(f"slowest warm median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
