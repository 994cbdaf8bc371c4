"""`tunesmith rollout`: start a canary or shadow rollout of a candidate run, and decide it from the live traffic.

`start` writes SERVE_DIR/rollouts/<name>.json (status active), which the running server picks up (serve/rollout.py).
`check` reads the request log since the rollout started, compares the candidate's answers with the primary's
(monitor/variants.py), and once the candidate has answered `min_requests` requests judges the live gates with the one
gate engine (tunesmith.eval.gates, metrics measured by "rollout"): every gate passes -> promote, one fails -> roll back.

Promotion reuses retrain's record and link swap, in this order, each step one atomic rename: the rollout file says
"promoting"; adapters/<name>.promotion.json says "pending"; the adapters/<name> link moves to the candidate; the
promotion record says "promoted"; the rollout file says "promoted". Until the link moves, every reader (a server
starting, `read_promotion`, `settle`) sees the previous adapter as the served one; a rollout left "promoting" is
settled by the link and finished by the next check. Rolling back is one rename of the rollout file. Every change is
also appended to SERVE_DIR/rollouts/<name>.log.jsonl.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from tunesmith.errors import RecipeError, RunError
from tunesmith.eval import gates, registry
from tunesmith.eval.gates import check_rules
from tunesmith.eval.registry import ROLLOUT
from tunesmith.eval.reward_model import RewardModel, is_reward_run
from tunesmith.monitor.report import VariantStats
from tunesmith.monitor.retrain import adapter_link, promote
from tunesmith.monitor.tool_replies import unjudged
from tunesmith.records import GateResult
from tunesmith.run import load_run
from tunesmith.serve.rollout import ACTIVE, Rollout, read_rollout, rollout_path, write_rollout
from tunesmith.serve.security import check_name
from tunesmith.serve.store import RequestLog

log = logging.getLogger(__name__)

DEFAULT_GATES: dict[str, str | float] = {
    "live_error_rate_increase": "<=0.02",
    "live_latency_p95_ratio": "<=2.0",
    "live_tool_call_valid_drop": "<=0.02",
}
"""Gates of a rollout started without --gate: no more errors, p95 latency at most twice the primary's, and (where
requests offer tools and both sides call) a share of parsable calls no more below the primary's than errors may rise."""
ROLLED_BACK_EXIT = 3
"""Exit code of `tunesmith rollout --check` when the candidate broke a gate and was rolled back."""


@dataclass
class Decision:
    """What a check found and did: waiting (too few candidate requests), promoted, rolled_back, or finished (the
    rollout was decided before)."""

    rollout: Rollout
    action: Literal["waiting", "promoted", "rolled_back", "finished"]
    candidate_requests: int = 0
    results: list[GateResult] = field(default_factory=list)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)


def live_gates(options: list[str], reward_model: str | None) -> dict[str, str | float]:
    """The rollout's gates: --gate metric=RULE options (live_* metrics only), else DEFAULT_GATES (plus
    live_reward_delta >= -0.5 with a reward model). RecipeError for a metric the live traffic does not measure."""
    parsed: dict[str, str | float] = dict(gates.gate_options(options)) if options else dict(DEFAULT_GATES)
    for name in parsed:
        if registry.ROLLOUT not in registry.metric(name).by:
            live = ", ".join(m for m in registry.METRICS if registry.ROLLOUT in registry.METRICS[m].by)
            raise RecipeError([("--gate", f"{name} is not measured on live traffic; rollout gates use: {live}")])
    if not options and reward_model:
        parsed["live_reward_delta"] = ">=-0.5"
    return parsed


def _link_target(serve_dir: Path, name: str) -> str | None:
    link = adapter_link(serve_dir, name)
    return os.path.realpath(link) if link.is_symlink() else None


def start(
    serve_dir: str | Path,
    name: str,
    candidate: str | Path,
    share: float,
    mode: Literal["canary", "shadow"] = "canary",
    min_requests: int = 100,
    gates: list[str] | None = None,
    reward_model: str | None = None,
) -> Rollout:
    """Write an active rollout of `candidate` against the run SERVE_DIR/adapters/<name> points at."""
    from tunesmith.serve.server import serve_dir as claim_serve_dir

    check_name(name)
    folder = claim_serve_dir(Path(serve_dir))
    primary = _link_target(folder, name)
    if primary is None:
        raise RunError(
            f"{folder / 'adapters' / name} is not an adapter link: nothing to roll out against",
            hint=f"Serve the run through the link (ln -s RUN {folder / 'adapters' / name}; serve --adapter {name}=...).",
        )
    new, served = load_run(candidate), load_run(primary)
    if not (new.adapter_dir / "adapter_config.json").exists():
        raise RunError(f"{new.dir} has no adapter: a rollout attaches the candidate next to the served base")
    if Path(new.base_path).resolve() != Path(served.base_path).resolve():
        raise RunError(f"{new.dir} was trained on {new.base_path}, the served run on {served.base_path}")
    if str(new.dir) == primary:
        raise RunError(f"{new.dir} is already served under {name!r}")
    if rollout_path(folder, name).exists() and (old := settle(folder, name)).status in ACTIVE:
        raise RunError(
            f"a rollout of {old.candidate} under {name!r} is still running",
            hint=f"Decide it first: tunesmith rollout {folder} {name} --check (or --abort).",
        )
    if reward_model is not None and not is_reward_run(reward_model):
        raise RunError(f"--reward-model {reward_model} is not a finished reward run (method: reward)")
    rollout = Rollout(
        name=name,
        candidate=str(new.dir),
        primary=primary,
        mode=mode,
        share=share,
        min_requests=min_requests,
        gates=live_gates(gates or [], reward_model),
        reward_model=str(Path(reward_model).resolve()) if reward_model else None,
        started=datetime.now(timezone.utc),
    )
    write_rollout(folder, rollout, "started")
    return rollout


def settle(serve_dir: Path, name: str) -> Rollout:
    """The rollout file, settled by the adapter link: "promoting" is promoted once the link names the candidate,
    and still active (the previous adapter serving) before that."""
    r = read_rollout(rollout_path(serve_dir, name))
    if r.status == "promoting" and _link_target(serve_dir, name) != r.candidate:
        return r.model_copy(update={"status": "active"})
    if r.status == "promoting":
        return r.model_copy(update={"status": "promoted"})
    return r


def figures(source: str | Path, r: Rollout) -> dict[str, dict[str, float]]:
    """variant -> figures of `r.name`'s rows since the rollout started, from the log at `source` (monitor/variants.py)."""
    from tunesmith.monitor.variants import compare

    with RequestLog.open(source) as store:
        rows = [row for row in store.iter_requests(since=r.started) if row.model == r.name]
        feedback = list(store.iter_feedback())
    scorer = None
    if r.reward_model:
        scorer = RewardModel.load(r.reward_model)
    return {s.variant: s.figures for s in compare(rows, feedback, scorer)}


def check(serve_dir: str | Path, name: str, log_source: str | Path | None = None) -> Decision:
    """Judge the rollout of `name` on the traffic since it started: promote, roll back, or wait for more requests.
    log_source: the request log (default the serve folder's; a postgresql:// URL for replicas)."""
    from tunesmith.monitor.variants import live_values

    folder = Path(serve_dir)
    r = settle(folder, name)
    if r.status == "promoted" and read_rollout(rollout_path(folder, name)).status == "promoting":
        promote_rollout(folder, r, r.reason)  # an earlier check stopped after the link moved: finish its records
        return Decision(r, "promoted")
    if r.status not in ACTIVE:
        return Decision(r, "finished")
    seen = figures(log_source if log_source is not None else folder, r)
    cand = seen.get(r.mode, {})
    n = int(cand.get("requests", 0))

    def stats(variant: str) -> VariantStats | None:
        return VariantStats(model=name, variant=variant, figures=seen[variant]) if variant in seen else None

    results = check_rules(r.gates, live_values(stats("primary"), stats(r.mode)), ROLLOUT)
    results = [unjudged(g, seen, r.mode) for g in results]  # a tool gate on traffic without calls: skipped
    r.live, r.results = seen, results
    if n < r.min_requests:
        write_rollout(folder, r, f"checked: {n} of {r.min_requests} candidate requests")
        return Decision(r, "waiting", n, results, seen)
    failed = [g for g in results if not g.passed]
    if failed:
        r.status, r.decided = "rolled_back", datetime.now(timezone.utc)
        r.reason = "; ".join(f"{g.name} {g.value if g.value is None else round(g.value, 4)} broke {g.rule}" for g in failed)
        write_rollout(folder, r, "rolled back")
        return Decision(r, "rolled_back", n, results, seen)
    promote_rollout(folder, r, f"every gate held over {n} candidate requests")
    return Decision(r, "promoted", n, results, seen)


def promote_rollout(folder: Path, r: Rollout, reason: str) -> None:
    """promoting -> promotion record pending -> link swap -> promotion record promoted -> promoted."""
    link = _link_target(folder, r.name)
    if link not in (r.primary, r.candidate):
        raise RunError(
            f"{folder / 'adapters' / r.name} now points at {link}, not at {r.primary} as when the rollout started",
            hint="Something else moved the link; check it, then start the rollout again.",
        )
    r.status, r.reason = "promoting", reason
    write_rollout(folder, r, "promoting")
    if link != r.candidate:
        added = f"rollout: {r.mode} {r.share:g} of {r.name}, {reason}"
        promote(folder, r.name, Path(r.candidate), Path(r.primary), added, r.results)
    r.status, r.decided = "promoted", datetime.now(timezone.utc)
    write_rollout(folder, r, "promoted")


def abort(serve_dir: str | Path, name: str, reason: str = "stopped by the operator") -> Rollout:
    """Roll back an active rollout by hand (nothing else changes: the link still names the primary)."""
    folder = Path(serve_dir)
    r = settle(folder, name)
    if r.status not in ACTIVE:
        raise RunError(f"the rollout of {name!r} is already {r.status}")
    if r.status == "promoting":
        raise RunError(f"the rollout of {name!r} is being promoted; check it again")
    r.status, r.decided, r.reason = "rolled_back", datetime.now(timezone.utc), reason
    write_rollout(folder, r, "rolled back")
    return r


def describe(decision: Decision) -> str:
    """One line for people."""
    r = decision.rollout
    if decision.action == "waiting":
        return (
            f"{r.name}: {r.mode} of {r.candidate} waiting: {decision.candidate_requests} of {r.min_requests} candidate requests"
        )
    if decision.action == "finished":
        return f"{r.name}: the rollout of {r.candidate} was already {r.status.replace('_', ' ')} ({r.reason})"
    return f"{r.name}: {decision.action.replace('_', ' ')} {r.candidate}: {r.reason}"
