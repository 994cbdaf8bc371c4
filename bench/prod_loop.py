"""One production loop, end to end, on the embedded model: served traffic with feedback -> a reward model -> a loop
cycle (monitor, export, screening, retrain, gates) -> a canary on live traffic -> promotion; then a sabotaged
candidate (trained to refuse) is canaried and rolled back by the live gates.

    .venv/bin/python bench/prod_loop.py            # SmolLM2-135M-Instruct (tunesmith models pull smollm2-135m-instruct)
    .venv/bin/python bench/prod_loop.py --tiny     # the tests' 2-layer random model: seconds, no figures worth quoting

Everything runs in one process: a real uvicorn server on loopback answers the official openai client; users are
simulated from the demo task's references (an answer equal to the reference is rated up, any other rated down with
the reference as the correction). Prints each phase's figures and wall time, the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the loopback server helper the tests use
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT / "src" / "tunesmith" / "demo" / "data"
KEY = "bench-key"
REFUSAL = "I am sorry, but I cannot help with that request."


def machine() -> str:
    """The hardware line every benchmark prints (train/hardware.py: CPU model, flags that matter, caps, versions)."""
    from tunesmith.train import hardware

    return hardware.hardware_line(hardware.describe())


TASK: dict[str, list[dict[str, Any]]] = {}


def rows(split: str, n: int, skip: int = 0) -> list[dict[str, Any]]:
    """Rows of the task: the demo's support tickets (train / eval split), or short sums for the tiny model."""
    return TASK[split][skip : skip + n]


def load_task(tiny: bool) -> None:
    if tiny:
        from helpers import chat_rows

        TASK.update(train=chat_rows(300, seed=1), eval=chat_rows(100, seed=2))
        return
    for split in ("train", "eval"):
        TASK[split] = [json.loads(x) for x in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def write(path: Path, data: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return path


def recipe(work: Path, name: str, base: str, train: list[Path], steps: int, **extra: Any) -> Path:
    import yaml

    r = {
        "name": name,
        "model": {"base": base},
        "data": {"train": [str(p) for p in train], "eval_fraction": 0.15, "max_length": 384},
        "adapter": {"r": 8, "alpha": 16},
        "training": {"max_steps": steps, "batch_size": 4, "learning_rate": 5e-4, "logging_steps": 1, "save_steps": steps},
        "eval": {
            "max_new_tokens": 96,
            "batch_size": 8,
            "max_examples": 8,
            "gates": {"json_valid": ">=0"},
            "checks": ["inputs_unchanged"],
        },
        "monitor": {"max_regression": 1.0, "embedder": "char-ngrams", "min_requests": 4},
        "output_dir": str(work / "runs" / name),
        **extra,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(r), encoding="utf-8")
    return path


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Phase:
        self.t0 = time.monotonic()
        print(f"\n== {self.name} (load {os.getloadavg()[0]:.1f})", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        print(f"   {self.name}: {time.monotonic() - self.t0:.0f} s", flush=True)


def traffic(
    client: Any, prompts: list[dict[str, Any]], max_tokens: int, feedback: bool, url: str, clients: int = 4
) -> list[tuple[str, bool]]:
    """Ask each prompt (`clients` at a time, so the server batches them); with feedback, rate each answer against the
    reference (down + the reference as the correction)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def ask(row: dict[str, Any]) -> tuple[str, bool]:
        messages, ref = row["messages"][:-1], row["messages"][-1]["content"]
        res = client.chat.completions.create(model="support", messages=messages, max_tokens=max_tokens)
        right = (res.choices[0].message.content or "").strip() == ref.strip()
        if feedback:
            verdict = {"rating": "up"} if right else {"rating": "down", "correction": ref}
            httpx.post(url + "/v1/feedback", json={"request_id": res.id, **verdict}, headers={"Authorization": f"Bearer {KEY}"})
        return res.id, right

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(ask, prompts))


def until_routed(client: Any, prompts: list[dict[str, Any]], max_tokens: int, url: str, share: float, need: int) -> int:
    """Ask prompts (cycling, 4 at a time) until `need` of them were routed to the candidate; how many were asked."""
    from tunesmith.serve.rollout import routed

    asked = routed_n = 0
    while routed_n < need and asked < 4 * need / share:
        batch = [prompts[(asked + i) % len(prompts)] for i in range(4)]
        ids = [rid for rid, _ in traffic(client, batch, max_tokens, False, url)]
        asked, routed_n = asked + len(ids), routed_n + sum(routed(rid, share) for rid in ids)
    return asked


def print_figures(decision: Any) -> None:
    figures = ("requests", "errors", "latency_p95_s", "output_words", "refusal_rate", "reward_model", "output_drift_p")
    print("   | figure | " + " | ".join(decision.figures) + " |")
    print("   |---|" + "---|" * len(decision.figures))
    for f in figures:
        print(f"   | {f} | " + " | ".join(f"{v[f]:.4g}" if f in v else "" for v in decision.figures.values()) + " |")
    for g in decision.results:
        value = "n/a" if g.value is None else f"{g.value:.4g}"
        print(f"   gate {g.name} {value} ({g.rule}): {g.status}")
    print(f"   decision: {decision.action}: {decision.rollout.reason}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tiny", action="store_true", help="the tests' tiny random model instead of SmolLM2 (quick, meaningless figures)"
    )
    p.add_argument("--steps", type=int, default=6, help="optimizer steps of each training run")
    p.add_argument("--requests", type=int, default=12, help="served requests before the first cycle")
    p.add_argument("--max-tokens", type=int, default=80)
    ns = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="tunesmith-prodloop-") as tmp:
        run_bench(Path(tmp), ns)


def run_bench(work: Path, ns: argparse.Namespace) -> None:
    import openai
    from serve_helpers import free_port, live_server

    from tunesmith.config import load_recipe
    from tunesmith.monitor import rollout as ro
    from tunesmith.monitor.feedback import export
    from tunesmith.monitor.loop import LoopOptions, run_cycle
    from tunesmith.run import load_run
    from tunesmith.serve.server import ServeOptions, prepare, serve_dir
    from tunesmith.train.entry import run as train_run
    from tunesmith.train.methods import evaluate, held_out_examples

    base = "smollm2-135m-instruct"
    if ns.tiny:
        from helpers import save_tiny_llama

        base = str(save_tiny_llama(work / "tiny-llama"))
    load_task(ns.tiny)
    started = time.monotonic()
    train_rows = rows("train", 80)
    with Phase("train v1 (SFT, the served version)"):
        v1_recipe = recipe(work, "support", base, [write(work / "train.jsonl", train_rows)], ns.steps)
        v1 = train_run(load_recipe(v1_recipe)).dir
    folder = serve_dir(work / "serve")
    (folder / "adapters").mkdir()
    (folder / "adapters" / "support").symlink_to(v1)
    port = free_port()
    opts = ServeOptions(base, [f"support={folder / 'adapters' / 'support'}"], port=port, dir=folder, api_keys=[KEY], max_batch=8)
    app = prepare(opts).app
    app.state.tunesmith.rollouts.poll_s = 0.2
    held = [{"messages": e.messages} for e in held_out_examples(load_run(v1))]
    served = rows("eval", ns.requests) + held[:2]  # two held-out prompts: the loop must refuse them
    random.Random(0).shuffle(served)
    with live_server(app, port=port, timeout_s=600) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, timeout=600)
        with Phase(f"served traffic: {len(served)} requests with feedback"):
            asked = traffic(client, served, ns.max_tokens, True, url)
            print(f"   {sum(r for _, r in asked)} answers equal to the reference (up), {sum(not r for _, r in asked)} corrected")
        with Phase("reward model (method: reward) on the feedback's preference pairs"):
            pairs = export(folder, "dpo", work / "feedback-dpo.jsonl")
            extra = rows("train", 24, skip=200)  # plus pairs of the task's own answers against refusals
            more = [
                {
                    "prompt": r["messages"][:-1],
                    "chosen": [r["messages"][-1]],
                    "rejected": [{"role": "assistant", "content": REFUSAL}],
                }
                for r in extra
            ]
            rm_recipe = recipe(work, "rm", base, [pairs.path, write(work / "pairs.jsonl", more)], ns.steps, method="reward")
            rm = train_run(load_recipe(rm_recipe)).dir
            report = evaluate(load_run(rm))
            t, b = report.summary["tuned"], report.summary["base"]
            print(f"   {pairs.rows} feedback pairs + {len(more)} task pairs; held-out pairwise accuracy {b['pairwise_accuracy']:.3f} -> "
                  f"{t['pairwise_accuracy']:.3f}, ECE {t['calibration_error']:.3f}, {report.n_examples} pairs")  # fmt: skip
        loop = LoopOptions(folder, v1_recipe, "support", share=0.5, min_requests=6, reward_model=str(rm), embedder="char-ngrams",
                           gates=["live_error_rate_increase=<=0.02", "live_latency_p95_ratio=<=3", "live_reward_delta=>=-1"])  # fmt: skip
        with Phase("loop cycle: monitor -> export -> screen -> retrain -> gates -> canary"):
            cycle = run_cycle(loop)
            print(
                f"   outcome {cycle.outcome} (exit {cycle.exit_code}); exported {cycle.exported}, added {cycle.added}; left out {cycle.dropped}"
            )
            print(f"   drifting: {cycle.drifted or 'none'}; gates: " + ", ".join(f"{g.name} {g.status}" for g in cycle.gates))
            if cycle.outcome != "canary_started":
                raise SystemExit(f"the cycle did not start a canary: {cycle.error or cycle.outcome}")
        time.sleep(1)
        with Phase("canary of v2 on 50% of traffic until 6 requests reached it, then the check"):
            n = until_routed(client, rows("eval", 30, skip=ns.requests), ns.max_tokens, url, 0.5, 6)
            print(f"   {n} requests, at least 6 of them routed to the candidate")
            decision = ro.check(folder, "support")
            print_figures(decision)
        with Phase("sabotaged candidate: trained to refuse, canaried, rolled back"):
            hot = {"max_steps": ns.steps, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "save_steps": ns.steps}
            bad_rows = [{"messages": [*r["messages"][:-1], {"role": "assistant", "content": REFUSAL}]} for r in train_rows]
            bad = train_run(
                load_recipe(recipe(work, "sabotaged", base, [write(work / "bad.jsonl", bad_rows)], ns.steps, training=hot))
            ).dir
            ro.start(
                folder, "support", bad, 0.5, "canary", 6, ["live_refusal_rate_increase=<=0.2", "live_reward_delta=>=-1"], str(rm)
            )
            time.sleep(1)
            n = until_routed(client, rows("eval", 30, skip=ns.requests), ns.max_tokens, url, 0.5, 6)
            print(f"   {n} requests, at least 6 of them routed to the candidate")
            sabotage = ro.check(folder, "support")
            print_figures(sabotage)
        print(f"\nserved now: {os.path.realpath(folder / 'adapters' / 'support')}")
    print(f"total {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.1f}; {machine()}")


if __name__ == "__main__":
    main()
