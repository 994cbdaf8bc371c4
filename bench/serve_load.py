"""Load test of `tunesmith serve` on loopback: requests/s, tokens/s, latency percentiles and time to first token.

For each server mode (LoRA adapter batched, adapter one request at a time, merged model batched) and each
number of concurrent clients (default 1, 4, 16), closed-loop clients send non-streamed chat requests for
--seconds (throughput and latency), then streamed ones for half as long (time to first token).

    .venv/bin/python bench/serve_load.py                 # trains a 2-step SmolLM2 LoRA run first (CPU: minutes)
    .venv/bin/python bench/serve_load.py --run runs/x    # an existing adapter run

Prints a markdown table (copy it to docs/serving.md with the machine and date).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the loopback server helper the tests use

KEY = "bench-key"


def quick_run(work: Path) -> Path:
    """A 2-step LoRA run on SmolLM2-135M-Instruct over the bundled demo data."""
    import yaml

    from tunesmith.config import load_recipe
    from tunesmith.train import sft

    data = ROOT / "src" / "tunesmith" / "demo" / "data"
    recipe = {
        "name": "bench",
        "model": {"base": "smollm2-135m-instruct"},
        "data": {"train": [str(data / "train.jsonl")], "eval": str(data / "eval.jsonl"), "max_length": 256},
        "training": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "save_steps": 2},
        "eval": {"max_new_tokens": 32},
        "output_dir": str(work / "run"),
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return sft.run(load_recipe(work / "bench.yaml")).dir


def merged_copy(run_dir: Path, work: Path) -> Path:
    from tunesmith.export.merge import merge
    from tunesmith.run import load_run

    out = work / "merged"
    merge(load_run(run_dir), out, n_check=1, max_new_tokens=8)
    return out


def prompts() -> list[list[dict[str, str]]]:
    rows = (ROOT / "src" / "tunesmith" / "demo" / "data" / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:32]
    return [[m for m in json.loads(r)["messages"] if m["role"] != "assistant"] for r in rows]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def drive(url: str, model: str, clients: int, seconds: float, max_tokens: int, stream: bool) -> dict[str, float]:
    """Closed-loop clients for `seconds`; returns counts, tokens and latencies (seconds)."""
    import httpx

    convs = prompts()
    lat: list[float] = []
    ttft: list[float] = []
    tokens, errors = 0, 0
    end = time.monotonic() + seconds

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens, errors
        n = i
        while time.monotonic() < end:
            body = {
                "model": model,
                "messages": convs[n % len(convs)],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": stream,
                "stream_options": {"include_usage": True},
            }
            n += clients
            t0 = time.monotonic()
            if not stream:
                res = await http.post(url + "/v1/chat/completions", json=body)
                if res.status_code != 200:
                    errors += 1
                    print(f"  HTTP {res.status_code}: {res.text[:200]}", file=sys.stderr)
                    continue
                tokens += res.json()["usage"]["completion_tokens"]
            else:
                first = None
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as res:
                    async for line in res.aiter_lines():
                        text = line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line
                        if text and first is None:
                            first = time.monotonic() - t0
                        if line.startswith("data: {") and '"usage"' in line and '"choices": []' in line:
                            tokens += json.loads(line[6:])["usage"]["completion_tokens"]
                if first is not None:
                    ttft.append(first)
            lat.append(time.monotonic() - t0)

    started = time.monotonic()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as http:
        await asyncio.gather(*(one(http, i) for i in range(clients)))
    wall = time.monotonic() - started
    return {
        "requests": len(lat),
        "rps": len(lat) / wall,
        "tps": tokens / wall,
        "p50": pct(lat, 0.5),
        "p95": pct(lat, 0.95),
        "p99": pct(lat, 0.99),
        "ttft50": pct(ttft, 0.5),
        "errors": errors,
    }


def bench_mode(label: str, target: Path, batching: bool, args: argparse.Namespace) -> list[str]:
    from serve_helpers import live_server

    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.engine import load_engine
    from tunesmith.serve.security import KeyRing

    settings = ServeSettings(keys=KeyRing.build([KEY], []), max_queue=1024, max_batch=16, batching=batching)
    app = create_app(lambda: load_engine(target), settings)
    rows = []
    with live_server(app, timeout_s=600) as url:
        model = app.state.tunesmith.engine.default_name
        for clients in args.concurrency:
            flat = asyncio.run(drive(url, model, clients, args.seconds, args.max_tokens, stream=False))
            streamed = asyncio.run(drive(url, model, clients, args.seconds / 2, args.max_tokens, stream=True))
            row = (
                f"| {label} | {clients} | {flat['rps']:.2f} | {flat['tps']:.1f} | {flat['p50']:.2f} | "
                f"{flat['p95']:.2f} | {flat['p99']:.2f} | {streamed['ttft50']:.2f} | {flat['errors']} |"
            )
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="Adapter run folder (default: train a 2-step SmolLM2 run).")
    parser.add_argument("--merged", type=Path, help="Merged model folder (default: merge --run).")
    parser.add_argument("--seconds", type=float, default=8.0, help="Load duration per row (streamed pass: half).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["batched", "single", "merged"],
        choices=["batched", "single", "merged"],
        help="Which server modes to measure.",
    )
    parser.add_argument("--work", type=Path, help="Keep the trained run and merged model here (default: a temp folder).")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir = args.run or quick_run(work)
        merged = args.merged or (merged_copy(run_dir, work) if "merged" in args.modes else None)
        cpu = f"CPU ({platform.processor() or platform.machine()})"
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu
        print(
            f"serve load, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {device}, torch {torch.__version__}, "
            f"{args.seconds:g} s per row, max_tokens {args.max_tokens}, greedy\n"
        )
        print("| mode | clients | req/s | tokens/s | p50 s | p95 s | p99 s | TTFT p50 s (stream) | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        if "batched" in args.modes:
            bench_mode("adapter, batched", run_dir, True, args)
        if "single" in args.modes:
            bench_mode("adapter, one at a time", run_dir, False, args)
        if merged is not None:
            bench_mode("merged, batched", merged, True, args)


if __name__ == "__main__":
    main()
