"""Load test of `tunesmith serve` on loopback: requests/s, tokens/s, latency percentiles and time to first token.

For each server mode (LoRA adapter batched, adapter one request at a time, merged model batched) and each
number of concurrent clients (default 1, 4, 16), closed-loop clients send non-streamed chat requests for
--seconds (throughput and latency), then streamed ones for half as long (time to first token).

    .venv/bin/python bench/serve_load.py                 # trains a 2-step SmolLM2 LoRA run first (CPU: minutes)
    .venv/bin/python bench/serve_load.py --run runs/x    # an existing adapter run

Several replicas sharing one request log (docs/deploy.md): clients go round-robin over the replicas; the table has
a row per replica and a total, and the shared log's rows are counted against the answers each replica gave.

    .venv/bin/python bench/serve_load.py --replicas 2 --temp-postgres      # starts 2 `tunesmith serve` processes
    .venv/bin/python bench/serve_load.py --replicas 2 --log postgresql://bench@db/tunesmith
    .venv/bin/python bench/serve_load.py --url http://a:8000 --url http://b:8000 --key KEY --log postgresql://...

Prints markdown tables (copy them to docs/serving.md or docs/deploy.md with the machine and date).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
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


def _stats(lat: list[float], ttft: list[float], tokens: int, answers: int, errors: int, wall: float) -> dict[str, float]:
    return {
        "requests": len(lat),
        "answers": answers,  # HTTP responses of any status: each is one row in the server's request log
        "rps": len(lat) / wall,
        "tps": tokens / wall,
        "p50": pct(lat, 0.5),
        "p95": pct(lat, 0.95),
        "p99": pct(lat, 0.99),
        "ttft50": pct(ttft, 0.5),
        "errors": errors,
    }


async def drive(
    urls: list[str], model: str, clients: int, seconds: float, max_tokens: int, stream: bool, key: str = KEY
) -> dict[str, dict[str, float]]:
    """Closed-loop clients for `seconds`, client i on urls[i % len(urls)]; per url and "total": counts, tokens and
    latencies (seconds) of the successful requests, answers of any status, errors."""
    import httpx

    convs = prompts()
    per: dict[str, dict[str, list]] = {u: {"lat": [], "ttft": [], "tokens": [0], "answers": [0], "errors": [0]} for u in urls}
    end = time.monotonic() + seconds

    async def one(http: httpx.AsyncClient, i: int) -> None:
        url = urls[i % len(urls)]
        mine = per[url]
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
                try:
                    res = await http.post(url + "/v1/chat/completions", json=body)
                except httpx.TransportError as exc:  # no answer (a replica gone): no row either
                    mine["errors"][0] += 1
                    print(f"  {url}: {type(exc).__name__}", file=sys.stderr)
                    continue
                mine["answers"][0] += 1
                if res.status_code != 200:
                    mine["errors"][0] += 1
                    print(f"  HTTP {res.status_code}: {res.text[:200]}", file=sys.stderr)
                    continue
                mine["tokens"][0] += res.json()["usage"]["completion_tokens"]
            else:
                first = None
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as res:
                    mine["answers"][0] += 1
                    async for line in res.aiter_lines():
                        text = line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line
                        if text and first is None:
                            first = time.monotonic() - t0
                        if line.startswith("data: {") and '"usage"' in line and '"choices": []' in line:
                            mine["tokens"][0] += json.loads(line[6:])["usage"]["completion_tokens"]
                if first is not None:
                    mine["ttft"].append(first)
            mine["lat"].append(time.monotonic() - t0)

    started = time.monotonic()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
        await asyncio.gather(*(one(http, i) for i in range(clients)))
    wall = time.monotonic() - started
    out = {u: _stats(d["lat"], d["ttft"], d["tokens"][0], d["answers"][0], d["errors"][0], wall) for u, d in per.items()}
    every = list(per.values())
    out["total"] = _stats(
        [x for d in every for x in d["lat"]],
        [x for d in every for x in d["ttft"]],
        sum(d["tokens"][0] for d in every),
        sum(d["answers"][0] for d in every),
        sum(d["errors"][0] for d in every),
        wall,
    )
    return out


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
            flat = asyncio.run(drive([url], model, clients, args.seconds, args.max_tokens, stream=False))["total"]
            streamed = asyncio.run(drive([url], model, clients, args.seconds / 2, args.max_tokens, stream=True))["total"]
            row = (
                f"| {label} | {clients} | {flat['rps']:.2f} | {flat['tps']:.1f} | {flat['p50']:.2f} | "
                f"{flat['p95']:.2f} | {flat['p99']:.2f} | {streamed['ttft50']:.2f} | {flat['errors']} |"
            )
            print(row, flush=True)
            rows.append(row)
    return rows


def start_replicas(model: str, n: int, log_url: str, work: Path, threads: int | None) -> list[tuple[str, subprocess.Popen]]:
    """n real `tunesmith serve MODEL --log LOG_URL` processes on free loopback ports; (url, process) once all are ready."""
    import httpx
    from serve_helpers import free_port

    started = []
    env = {**os.environ, "TUNESMITH_API_KEY": KEY}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for i in range(n):
        port = free_port()
        cmd = [sys.executable, "-m", "tunesmith", "serve", model, "--port", str(port), "--dir", str(work / f"replica-{i}")]
        cmd += ["--log", log_url, "--replica-id", f"replica-{i}", "--max-queue", "1024", "--max-batch", "16"]
        out = open(work / f"replica-{i}.log", "w")  # noqa: SIM115 (open as long as the process runs)
        started.append((f"http://127.0.0.1:{port}", subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)))
    for url, proc in started:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"replica {url} exited ({proc.returncode}); see {work}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"replica {url} not ready after 600 s")
            time.sleep(0.5)
    return started


def replica_id(url: str) -> str:
    """The id a server writes into its log rows, as its /metrics states it (tunesmith_request_log_info)."""
    import httpx

    found = re.search(r'tunesmith_request_log_info\{[^}]*replica="([^"]*)"', httpx.get(url + "/metrics", timeout=10).text)
    return found.group(1) if found else ""


def bench_replicas(urls: list[str], key: str, log_url: str | None, args: argparse.Namespace) -> None:
    """Round-robin load over the replicas: per replica and total throughput, then the shared log's new rows per replica
    against the answers each replica gave (every answer, errors included, is one row)."""
    import httpx

    from tunesmith.serve.store import RequestLog

    model = httpx.get(urls[0] + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["data"][0]["id"]
    ids = {u: replica_id(u) for u in urls}
    print("| replicas | clients | replica | req/s | tokens/s | p50 s | p95 s | errors | answers | log rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients in args.concurrency:
        log = RequestLog.open(log_url) if log_url else None
        before = log.replica_counts() if log else {}
        res = asyncio.run(drive(urls, model, clients, args.seconds, args.max_tokens, stream=False, key=key))
        after = log.replica_counts() if log else {}
        rows = {u: after.get(ids[u], 0) - before.get(ids[u], 0) for u in urls}
        for label, r, logged in [(ids[u] or u, res[u], rows[u]) for u in urls] + [
            ("**total**", res["total"], sum(rows.values()))
        ]:
            print(
                f"| {len(urls)} | {clients} | {label} | {r['rps']:.2f} | {r['tps']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                f"{r['errors']} | {r['answers']} | {logged if log else 'n/a'} |",
                flush=True,
            )
        if log is not None:
            same = all(rows[u] == res[u]["answers"] for u in urls)
            print(
                f"\nshared log {log.location}: {sum(rows.values())} new rows, {res['total']['answers']} answers "
                f"({'equal' if same else 'NOT EQUAL'} per replica)\n",
                flush=True,
            )
            log.close()


def main_replicas(args: argparse.Namespace) -> None:
    """--url / --replicas: drive several servers (started here, or already running) that share one log."""
    import torch

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        log_url = args.log
        if args.temp_postgres:
            from pg_helpers import new_database, postgres_server, why_not

            if why_not():
                raise SystemExit(f"--temp-postgres: {why_not()}")
            log_url = new_database(stack.enter_context(postgres_server(fsync=True)), "bench")
        urls, key = list(args.url or []), args.key or KEY
        if args.replicas:
            if not log_url:
                raise SystemExit("--replicas needs --log postgresql://... or --temp-postgres")
            started = start_replicas(args.model, args.replicas, log_url, work, args.threads)
            for _, proc in started:
                stack.callback(proc.wait, 60)
                stack.callback(proc.terminate)
            urls += [u for u, _ in started]
        cpu = cpu_name()
        print(
            f"serve load over {len(urls)} replica(s), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu}, "
            f"torch {torch.__version__}, model {args.model if args.replicas else 'as served'}, "
            f"{args.threads or 'default'} torch threads per replica, {args.seconds:g} s per row, "
            f"max_tokens {args.max_tokens}, greedy, non-streamed\n"
        )
        bench_replicas(urls, key, log_url, args)


def cpu_name() -> str:
    """The hardware line every benchmark prints (train/hardware.py: CPU model, flags that matter, caps, versions)."""
    from tunesmith.train import hardware

    return hardware.hardware_line(hardware.describe())


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
    several = parser.add_argument_group("several replicas sharing one request log")
    several.add_argument("--url", action="append", help="A running server to drive (repeatable); clients go round-robin.")
    several.add_argument("--replicas", type=int, default=0, help="Start this many `tunesmith serve --model` replicas.")
    several.add_argument("--model", default="smollm2-135m-instruct", help="What --replicas serve (catalog name or folder).")
    several.add_argument("--log", help="The shared log (postgresql://...): --replicas write to it; its rows are counted.")
    several.add_argument("--temp-postgres", action="store_true", help="Start a throwaway PostgreSQL server as --log.")
    several.add_argument("--key", help="API key of the --url servers (default: the one --replicas are started with).")
    several.add_argument("--threads", type=int, help="torch threads per started replica (OMP_NUM_THREADS).")
    args = parser.parse_args()
    if args.url or args.replicas:
        main_replicas(args)
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir = args.run or quick_run(work)
        merged = args.merged or (merged_copy(run_dir, work) if "merged" in args.modes else None)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
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
