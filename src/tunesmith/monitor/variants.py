"""Primary vs candidate in one log: the figures a rollout is judged on and the monitor shows per variant.

Per (model, variant) of the rows read: requests, errors, latency, feedback, answer length, refusals, the reward
model's mean score (when one is given), the tool calls of requests that offered tools (monitor/tool_replies.py) and,
for a candidate, how far its answers drift from the primary's (a two-sample MMD test on character-trigram embeddings
of the answers, as the monitor's embedding test). `live_values` turns them into the live gate metrics of the registry
(tunesmith.eval.registry, measured by "rollout").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunesmith.monitor import drift, tool_replies
from tunesmith.monitor.report import VariantStats
from tunesmith.monitor.rows import latest_feedback, prompt_of, reward_scores

if TYPE_CHECKING:
    from tunesmith.serve.store import FeedbackRow, RequestRow

CANDIDATES = ("canary", "shadow")


def _some(figures: dict[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items() if v is not None}


def stats(
    model: str, variant: str, rows: Sequence[RequestRow], verdicts: dict[str, FeedbackRow], scores: list[float]
) -> VariantStats:
    ok = [r for r in rows if r.answered]
    outputs = [r.output for r in ok if r.output is not None]
    ratings = [verdicts[r.request_id].rating for r in ok if r.request_id in verdicts]
    latencies = sorted(r.latency_s for r in ok)
    figures = {
        "requests": float(len(rows)),
        "errors": float(len(rows) - len(ok)),
        "error_rate": drift.share([not r.answered for r in rows]),
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_p95_s": drift.p95(latencies),
        "rated": float(len(ratings)),
        "down_rate": drift.share([x == "down" for x in ratings]),
        "output_words": drift.mean_words(outputs),
        "refusal_rate": drift.refusal_rate(outputs),
        "reward_model": sum(scores) / len(scores) if scores else None,
        **tool_replies.figures(ok),  # requests that offered tools: their calls, judged without a reference
    }
    return VariantStats(model=model, variant=variant, figures=_some(figures))


def _scores(reward_model: Any, rows: Sequence[RequestRow]) -> list[float]:
    """The reward model's score of each answered, content-logged row."""
    scored = [r for r in rows if r.answered and r.output is not None and prompt_of(r)]
    if reward_model is None or not scored:
        return []
    return reward_scores(reward_model, scored)


def compare(
    rows: Sequence[RequestRow], feedback: Sequence[FeedbackRow], reward_model: Any = None, seed: int = 0
) -> list[VariantStats]:
    """Per (model, variant): the figures; a candidate also gets output_drift_p against its model's primary."""
    verdicts = latest_feedback(list(feedback))
    groups: dict[tuple[str, str], list[RequestRow]] = {}
    for r in rows:
        groups.setdefault((r.model, r.variant), []).append(r)
    out = [stats(m, v, g, verdicts, _scores(reward_model, g)) for (m, v), g in sorted(groups.items())]
    for s in out:
        primary = groups.get((s.model, "primary"), [])
        if s.variant in CANDIDATES:
            p = output_drift(groups[(s.model, s.variant)], primary, seed)
            if p is not None:
                s.figures["output_drift_p"] = p
    return out


def output_drift(candidate: Sequence[RequestRow], primary: Sequence[RequestRow], seed: int = 0) -> float | None:
    """MMD permutation p-value of the candidate's answers against the primary's (char-ngram embeddings); None with
    fewer than 2 answers a side. A small p: the candidate answers differently."""
    a = [r.output for r in candidate if r.answered and r.output]
    b = [r.output for r in primary if r.answered and r.output]
    if len(a) < 2 or len(b) < 2:
        return None
    emb = drift.CharNgramEmbedder()
    a, b = drift.sample(a, 300, seed), drift.sample(b, 300, seed + 1)
    return drift.mmd_test(emb.encode(a), emb.encode(b), permutations=200, seed=seed).p_value


def live_values(primary: VariantStats | None, candidate: VariantStats | None) -> dict[str, float]:
    """The live gate metrics (registry names live_*) of a candidate against its primary; a metric whose inputs are
    missing (no ratings, no reward model) is absent, so a gate on it fails as not measured."""
    if candidate is None:
        return {}
    c, p = candidate.figures, primary.figures if primary is not None else {}
    out: dict[str, float | None] = {
        "live_error_rate": c.get("error_rate"),
        "live_output_drift_p": c.get("output_drift_p"),
    }

    def diff(key: str) -> float | None:
        return c[key] - p[key] if key in c and key in p else None

    out["live_error_rate_increase"] = diff("error_rate")
    out["live_down_rate_increase"] = diff("down_rate")
    out["live_reward_delta"] = diff("reward_model")
    out["live_refusal_rate_increase"] = diff("refusal_rate")
    for name in tool_replies.SCORED:  # a drop: the candidate's share of valid calls below the primary's
        out[f"live_{name}_drop"] = -d if (d := diff(name)) is not None else None
    if c.get("latency_p95_s") is not None and p.get("latency_p95_s"):
        out["live_latency_p95_ratio"] = c["latency_p95_s"] / p["latency_p95_s"]
    if c.get("output_words") is not None and p.get("output_words"):
        out["live_output_length_change"] = abs(c["output_words"] / p["output_words"] - 1.0)
    return _some(out)
