"""From the request log to a MonitorReport: the recent window, the window before it, the baseline run's training data.

The log is read through tunesmith.serve.store (RequestRow / FeedbackRow) only: a serve folder, a .sqlite file or the
postgresql:// log several replicas share. Windows end at `until` (default: now): recent = [until - window_hours,
until), earlier = the same length before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunesmith.data.formats import load_examples
from tunesmith.data.template import reference
from tunesmith.eval.metrics import references_are_json
from tunesmith.eval.reward_model import RewardModel
from tunesmith.monitor import drift
from tunesmith.monitor.report import HourPoint, MonitorReport, ReplicaStats, Signal, VariantStats, Window
from tunesmith.monitor.rows import latest_feedback, prompt_of, prompt_text, reward_scores
from tunesmith.serve.store import RequestLog
from tunesmith.train.methods import held_out_examples

if TYPE_CHECKING:
    from tunesmith.config import MonitorSection
    from tunesmith.run import Run
    from tunesmith.serve.store import FeedbackRow, RequestRow

log = logging.getLogger(__name__)


def to_traffic(name: str, rows: list[RequestRow], verdicts: dict[str, FeedbackRow]) -> drift.Traffic:
    ok = [r for r in rows if r.answered]
    texts = [(prompt_text(r), r.output) for r in ok if r.content_logged]
    return drift.Traffic(
        name=name,
        prompts=[p for p, _ in texts if p is not None],
        outputs=[o for _, o in texts if o is not None],
        latencies_s=[r.latency_s for r in ok],
        errors=[not r.answered for r in rows],
        ratings=[verdicts[r.request_id].rating for r in rows if r.request_id in verdicts],
    )


def training_traffic(run: Run) -> tuple[drift.Traffic, bool]:
    """The baseline run's training prompts and answers (its held-out copy when the data files moved); JSON task?"""
    files = [f for f in run.recipe.data.train if Path(f).is_file()]
    examples = load_examples(files) if files else held_out_examples(run)
    answered = [e for e in examples if any(m["role"] == "assistant" for m in e.messages)]
    prompts = [next((m["content"] for m in reversed(e.messages) if m["role"] == "user"), "") for e in answered]
    refs = [reference(e.messages) for e in answered]
    return drift.Traffic("training", prompts=prompts, outputs=refs, served=False), references_are_json(refs)


def hours(rows: list[RequestRow], verdicts: dict[str, FeedbackRow]) -> list[HourPoint]:
    """Per UTC hour series for the pictures."""
    groups: dict[datetime, list[RequestRow]] = {}
    for r in rows:
        at = r.time if r.time.tzinfo else r.time.replace(tzinfo=timezone.utc)
        groups.setdefault(at.replace(minute=0, second=0, microsecond=0), []).append(r)
    points = []
    for hour, group in sorted(groups.items()):
        t = to_traffic("hour", group, verdicts)
        points.append(
            HourPoint(
                hour=hour,
                requests=len(group),
                error_rate=drift.share(t.errors) or 0.0,
                latency_p95_s=drift.p95(t.latencies_s),
                prompt_words=drift.mean_words(t.prompts),
                output_words=drift.mean_words(t.outputs),
                refusal_rate=drift.refusal_rate(t.outputs),
                down_rate=drift.share([x == "down" for x in t.ratings]),
            )
        )
    return points


def replicas(rows: list[RequestRow]) -> list[ReplicaStats]:
    """Per replica that wrote rows (by --replica-id, '' for rows without one): requests, answered, errors, p95 latency."""
    groups: dict[str, list[RequestRow]] = {}
    for r in rows:
        groups.setdefault(r.replica or "", []).append(r)
    return [
        ReplicaStats(
            replica=name,
            requests=len(group),
            answered=sum(r.answered for r in group),
            errors=sum(not r.answered for r in group),
            latency_p95_s=drift.p95([r.latency_s for r in group if r.answered]),
        )
        for name, group in sorted(groups.items())
    ]


@dataclass
class Windows:
    """The rows clients were answered with (a rollout's shadow answers apart: no client saw them)."""

    location: str  # the log read, for people (a URL's password masked)
    recent: list[RequestRow]
    earlier: list[RequestRow]
    everything: list[RequestRow]  # the last week (at least both windows), for the pictures
    feedback: list[FeedbackRow]
    recent_window: Window
    earlier_window: Window
    shadow: list[RequestRow] = field(default_factory=list)  # the recent window's shadow answers


def read_windows(source: str | Path, window_hours: float, until: datetime | None = None) -> Windows:
    """The rows of the log at `source` (see RequestLog.open) split into the recent and earlier windows (and all rows,
    for the pictures)."""
    end = until or datetime.now(timezone.utc)
    end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    mid, start = end - timedelta(hours=window_hours), end - timedelta(hours=2 * window_hours)
    with RequestLog.open(source) as store:
        # The pictures show at most a week (or the two windows when longer): a year-old log is not read whole.
        everything = list(store.iter_requests(since=min(start, end - timedelta(days=7)), until=end))
        feedback = list(store.iter_feedback())
    shadow = [r for r in everything if r.variant == "shadow" and _epoch(r.time) >= mid.timestamp()]
    everything = [r for r in everything if r.variant != "shadow"]
    recent = [r for r in everything if _epoch(r.time) >= mid.timestamp()]
    earlier = [r for r in everything if start.timestamp() <= _epoch(r.time) < mid.timestamp()]
    return Windows(
        store.location,
        recent,
        earlier,
        everything,
        feedback,
        Window(start=mid, end=end, requests=len(recent)),
        Window(start=start, end=mid, requests=len(earlier)),
        shadow,
    )


def _epoch(t: datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def _skipped(signals: list[Signal], why: str) -> list[Signal]:
    return [s.model_copy(update={"status": "skip", "detail": why}) if s.status != "skip" else s for s in signals]


def _vectors(embedder: Any, texts: list[str], cfg: MonitorSection, salt: int) -> np.ndarray | None:
    picked = drift.sample(texts, cfg.max_samples, cfg.seed + salt)
    return embedder.encode(picked) if len(picked) >= 2 else None


def check(
    source: str | Path, baseline: Run | None, cfg: MonitorSection, until: datetime | None = None, embedder: Any = None
) -> MonitorReport:
    """Every drift signal of the log at `source` (serve folder, .sqlite file or postgresql:// URL): recent vs training
    (with a baseline run) and recent vs earlier, and the recent window per replica."""
    w = read_windows(source, cfg.window_hours, until)
    verdicts = latest_feedback(w.feedback)
    recent, earlier = to_traffic("recent", w.recent, verdicts), to_traffic("earlier", w.earlier, verdicts)
    embedder = embedder or drift.embedder_for(cfg)
    recent_vec = _vectors(embedder, recent.prompts, cfg, 0)
    signals: list[Signal] = []
    json_task = False
    refs: list[tuple[drift.Traffic, int]] = [(earlier, len(w.earlier))]
    if baseline is not None:
        train, json_task = training_traffic(baseline)
        refs.insert(0, (train, train.n))
    for ref, n_ref in refs:
        ref_vec = _vectors(embedder, ref.prompts, cfg, 1)
        pair = (recent_vec, ref_vec) if recent_vec is not None and ref_vec is not None else None
        found = drift.input_signals(recent, ref, pair, cfg) + drift.output_signals(recent, ref, json_task, cfg)
        if ref.served:
            found += drift.ops_signals(recent, ref, cfg)
        if min(len(w.recent), n_ref) < cfg.min_requests:
            found = _skipped(found, f"too few rows: {len(w.recent)} recent, {n_ref} {ref.name} (min_requests {cfg.min_requests})")
        signals += found
    scorer = reward_scorer(cfg)
    if scorer is not None:
        signals.append(reward_signal(scorer, w, cfg))
    return MonitorReport(
        serve_dir=w.location,
        baseline=str(baseline.dir) if baseline else None,
        created=datetime.now(timezone.utc),
        recent=w.recent_window,
        earlier=w.earlier_window,
        json_task=json_task,
        embedder=getattr(embedder, "name", type(embedder).__name__),
        signals=signals,
        hours=with_rewards(hours(w.everything, verdicts), w.everything, scorer, cfg),
        replicas=replicas(w.recent),
        reward_model=cfg.reward_model,
        variants=by_variant(w, scorer),
    )


def reward_scorer(cfg: MonitorSection) -> Any:
    """The reward model of `monitor.reward_model` (tunesmith.eval.reward_model, the one scorer), or None."""
    if not cfg.reward_model:
        return None

    return RewardModel.load(cfg.reward_model)


def _scored(scorer: Any, rows: list[RequestRow], cfg: MonitorSection, salt: int) -> dict[str, float]:
    """request_id -> score for at most max_samples answered, content-logged rows (a seeded sample)."""
    usable = [r for r in rows if r.answered and r.output is not None and prompt_of(r)]
    picked = drift.sample(usable, cfg.max_samples, cfg.seed + salt)
    values = reward_scores(scorer, picked) if picked else []
    return {r.request_id: v for r, v in zip(picked, values)}


def reward_signal(scorer: Any, w: Windows, cfg: MonitorSection) -> Signal:
    """Mean reward-model score of the recent window's answers against the earlier window's: a drop by more than
    monitor.max_reward_drop is drift (the served answers got worse by the reward model's judgement)."""
    recent, earlier = _scored(scorer, w.recent, cfg, 2), _scored(scorer, w.earlier, cfg, 3)
    a = sum(recent.values()) / len(recent) if recent else None
    b = sum(earlier.values()) / len(earlier) if earlier else None
    drop = None if a is None or b is None else b - a
    few = min(len(w.recent), len(w.earlier)) < cfg.min_requests
    return Signal(
        name="reward_model",
        kind="output",
        reference="earlier",
        recent=a,
        baseline=b,
        statistic=drop,
        threshold=cfg.max_reward_drop,
        rule=f"drop > {cfg.max_reward_drop:g}",
        status="skip" if drop is None or few else ("drift" if drop > cfg.max_reward_drop else "ok"),
        detail=f"mean score of {len(recent)} recent vs {len(earlier)} earlier answers ({Path(scorer.name).name})",
    )


def with_rewards(points: list[HourPoint], rows: list[RequestRow], scorer: Any, cfg: MonitorSection) -> list[HourPoint]:
    """The hours with the mean reward of their scored answers (a seeded sample of at most max_samples per hour)."""
    if scorer is None:
        return points
    out = []
    for point in points:
        hour = [r for r in rows if _epoch(r.time) // 3600 == point.hour.timestamp() // 3600]
        scores = _scored(scorer, hour, cfg, 4)
        out.append(point.model_copy(update={"reward_mean": sum(scores.values()) / len(scores) if scores else None}))
    return out


def by_variant(w: Windows, scorer: Any) -> list[VariantStats]:
    """The recent window per model and rollout variant, when a canary or shadow answered in it."""
    from tunesmith.monitor.variants import compare

    rows = w.recent + w.shadow
    if not any(r.variant != "primary" for r in rows):
        return []
    return compare(rows, w.feedback, scorer)


def out_of_distribution(recent_prompts: list[str], train_prompts: list[str], embedder: Any, quantile: float = 0.05) -> list[bool]:
    """Per recent prompt: is its nearest training prompt (cosine) less similar than the `quantile` of the training
    prompts' own leave-one-out nearest-neighbour similarities?"""
    if len(train_prompts) < 3 or not recent_prompts:
        return [False] * len(recent_prompts)
    t = embedder.encode(train_prompts)
    own = t @ t.T
    np.fill_diagonal(own, -np.inf)
    cut = float(np.quantile(own.max(1), quantile))
    nearest = (embedder.encode(recent_prompts) @ t.T).max(1)
    return [bool(x < cut) for x in nearest]
