"""Drift statistics: is the recent traffic different from a reference (the training data, or an earlier window)?

Inputs: a two-sample MMD test on sentence embeddings (RBF kernel, median-distance bandwidth, permutation p-value,
seeded), mean length and word-frequency shift. Outputs: length, refusal rate, JSON-valid rate (JSON tasks), share
rated down. Operations: p95 latency and error rate. Each comparison becomes a `Signal` judged against the recipe's
`monitor` thresholds. Pure functions over texts and numbers: reading the log is traffic.py's job.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from tunesmith.eval.metrics import json_valid
from tunesmith.monitor.report import Signal

if TYPE_CHECKING:
    from tunesmith.config import MonitorSection

_WORD = re.compile(r"\w+", re.UNICODE)
T = TypeVar("T")


@dataclass
class Traffic:
    """One side of a comparison: prompts and answers (texts), and what only served traffic has (latency, errors,
    ratings). `served` is False for the training data, whose operational signals do not exist."""

    name: str
    prompts: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    errors: list[bool] = field(default_factory=list)
    ratings: list[str] = field(default_factory=list)  # "up" / "down" of the rated requests in the window
    served: bool = True

    @property
    def n(self) -> int:
        return len(self.errors) if self.served else len(self.prompts)


# --- embeddings ---------------------------------------------------------------------------------------------------


class CharNgramEmbedder:
    """Hashed character-trigram counts, L2-normalised: no model to load, milliseconds per thousand texts.
    Sees spelling and topic words, not meaning; the default embedder is MiniLM."""

    name = "char-ngrams"

    def __init__(self, dim: int = 512):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            t = f"  {text.lower()} "
            idx = [zlib.crc32(t[j : j + 3].encode()) % self.dim for j in range(len(t) - 2)]
            out[i] = np.bincount(idx, minlength=self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.asarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


def embedder_for(section: MonitorSection) -> Any:
    """The section's embedder: the bundled MiniLM through tunesmith.rag.embed (loaded once per process), or char-ngrams."""
    if section.embedder == "char-ngrams":
        return CharNgramEmbedder()
    from tunesmith.rag.embed import load_embedder

    return load_embedder(None)


@dataclass
class MMDResult:
    mmd2: float  # unbiased squared MMD, in kernel units (0 = same distribution)
    p_value: float
    bandwidth: float


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> MMDResult:
    """Two-sample test with an RBF kernel (bandwidth = median pairwise distance): unbiased MMD² of x (n, d) vs y (m, d)
    and its permutation p-value, (1 + #perm >= observed) / (1 + permutations)."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("mmd_test needs at least 2 samples per side")
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    upper = sq[np.triu_indices(n + m, 1)]
    bandwidth = float(np.sqrt(np.median(upper[upper > 0]))) if np.any(upper > 0) else 1.0
    kernel = np.exp(-sq / (2 * bandwidth**2))
    rng = np.random.default_rng(seed)
    labels = np.zeros((permutations + 1, n + m))
    labels[0, :n] = 1.0  # row 0: the observed split
    for i in range(1, permutations + 1):
        labels[i, rng.permutation(n + m)[:n]] = 1.0
    # With s the x-indicator: sum_xx = s'Ks, sum_xy = s'K1 - s'Ks, sum_yy = 1'K1 - 2 s'K1 + s'Ks (diagonal is 1).
    ks = labels @ kernel
    s_k_s = (ks * labels).sum(1)
    s_k_1 = ks.sum(1)
    total = kernel.sum()
    xx = (s_k_s - n) / (n * (n - 1))
    yy = (total - 2 * s_k_1 + s_k_s - m) / (m * (m - 1))
    xy = (s_k_1 - s_k_s) / (n * m)
    stats = xx + yy - 2 * xy
    p_value = (1 + int(np.sum(stats[1:] >= stats[0]))) / (1 + permutations)
    return MMDResult(float(stats[0]), p_value, bandwidth)


def sample(texts: Sequence[T], k: int, seed: int) -> list[T]:
    """At most k texts (or rows), a seeded sample without replacement (order kept)."""
    if len(texts) <= k:
        return list(texts)
    keep = sorted(np.random.default_rng(seed).choice(len(texts), size=k, replace=False))
    return [texts[i] for i in keep]


# --- simple statistics ----------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def mean_words(texts: Sequence[str]) -> float | None:
    return float(np.mean([len(words(t)) for t in texts])) if texts else None


def vocab_shift(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Jensen-Shannon divergence (base 2, 0-1) of the two sides' word-frequency distributions."""
    ca, cb = Counter(w for t in a for w in words(t)), Counter(w for t in b for w in words(t))
    na, nb = sum(ca.values()), sum(cb.values())
    if not na or not nb:
        return None
    js = 0.0
    for w in ca.keys() | cb.keys():
        p, q = ca[w] / na, cb[w] / nb
        mid = (p + q) / 2
        js += (p * math.log2(p / mid) if p else 0.0) + (q * math.log2(q / mid) if q else 0.0)
    return js / 2


def refusal_rate(texts: Sequence[str]) -> float | None:
    from tunesmith.data.checks import looks_like_refusal

    return sum(map(looks_like_refusal, texts)) / len(texts) if texts else None


def json_valid_rate(texts: Sequence[str]) -> float | None:

    return float(np.mean([json_valid(t) for t in texts])) if texts else None


def p95(values: Sequence[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# --- signals ---------------------------------------------------------------------------------------------------------


def _signal(
    name: str,
    kind: str,
    ref: Traffic,
    recent: float | None,
    reference: float | None,
    statistic: float | None,
    threshold: float,
    rule: str,
    drifted: bool | None,
    detail: str = "",
) -> Signal:
    status = "skip" if drifted is None else ("drift" if drifted else "ok")
    return Signal(
        name=name,
        kind=kind,
        reference=ref.name,
        recent=recent,
        baseline=reference,
        statistic=statistic,
        threshold=threshold,
        rule=rule,
        status=status,
        detail=detail,
    )


def _relative(recent: float | None, reference: float | None) -> float | None:
    if recent is None or reference is None or reference <= 0:
        return None
    return recent / reference - 1.0


def input_signals(
    recent: Traffic, ref: Traffic, vectors: tuple[np.ndarray, np.ndarray] | None, cfg: MonitorSection
) -> list[Signal]:
    """Embedding MMD, prompt length and vocabulary: recent vs ref."""
    out = []
    if vectors is not None:
        res = mmd_test(vectors[0], vectors[1], cfg.permutations, cfg.seed)
        out.append(
            _signal(
                "input_embedding",
                "input",
                ref,
                res.mmd2,
                0.0,
                res.p_value,
                cfg.alpha,
                f"p < {cfg.alpha:g}",
                res.p_value < cfg.alpha,
                f"MMD² {res.mmd2:.4f}, p {res.p_value:.3f}, {len(vectors[0])} vs {len(vectors[1])} prompts",
            )
        )
    else:
        out.append(
            _signal(
                "input_embedding", "input", ref, None, None, None, cfg.alpha, f"p < {cfg.alpha:g}", None, "too few logged prompts"
            )
        )
    a, b = mean_words(recent.prompts), mean_words(ref.prompts)
    change = _relative(a, b)
    out.append(
        _signal(
            "input_length",
            "input",
            ref,
            a,
            b,
            change,
            cfg.max_length_change,
            f"|change| > {cfg.max_length_change:g}",
            None if change is None else abs(change) > cfg.max_length_change,
            "mean words per prompt",
        )
    )
    js = vocab_shift(recent.prompts, ref.prompts)
    out.append(
        _signal(
            "input_vocabulary",
            "input",
            ref,
            js,
            0.0,
            js,
            cfg.max_vocab_shift,
            f"JS > {cfg.max_vocab_shift:g}",
            None if js is None else js > cfg.max_vocab_shift,
            "word-frequency Jensen-Shannon divergence",
        )
    )
    return out


def output_signals(recent: Traffic, ref: Traffic, json_task: bool, cfg: MonitorSection) -> list[Signal]:
    """Answer length, refusals, JSON validity (JSON tasks) and, against an earlier window, the share rated down."""
    a, b = mean_words(recent.outputs), mean_words(ref.outputs)
    change = _relative(a, b)
    out = [
        _signal(
            "output_length",
            "output",
            ref,
            a,
            b,
            change,
            cfg.max_length_change,
            f"|change| > {cfg.max_length_change:g}",
            None if change is None else abs(change) > cfg.max_length_change,
            "mean words per answer",
        )
    ]
    ra, rb = refusal_rate(recent.outputs), refusal_rate(ref.outputs)
    up = None if ra is None or rb is None else ra - rb
    out.append(
        _signal(
            "refusal_rate",
            "output",
            ref,
            ra,
            rb,
            up,
            cfg.max_refusal_increase,
            f"increase > {cfg.max_refusal_increase:g}",
            None if up is None else up > cfg.max_refusal_increase,
        )
    )
    if json_task:
        ja, jb = json_valid_rate(recent.outputs), json_valid_rate(ref.outputs)
        drop = None if ja is None or jb is None else jb - ja
        out.append(
            _signal(
                "json_valid_rate",
                "output",
                ref,
                ja,
                jb,
                drop,
                cfg.max_json_valid_drop,
                f"drop > {cfg.max_json_valid_drop:g}",
                None if drop is None else drop > cfg.max_json_valid_drop,
            )
        )
    if ref.served:
        da, db = share([r == "down" for r in recent.ratings]), share([r == "down" for r in ref.ratings])
        out.append(
            _signal(
                "down_rate",
                "output",
                ref,
                da,
                db,
                da,
                cfg.max_down_rate,
                f"> {cfg.max_down_rate:g}",
                None if da is None else da > cfg.max_down_rate,
                f"{len(recent.ratings)} rated answers",
            )
        )
    return out


def ops_signals(recent: Traffic, earlier: Traffic, cfg: MonitorSection) -> list[Signal]:
    """p95 latency and error rate against the earlier window."""
    la, lb = p95(recent.latencies_s), p95(earlier.latencies_s)
    change = _relative(la, lb)
    out = [
        _signal(
            "latency_p95",
            "ops",
            earlier,
            la,
            lb,
            change,
            cfg.max_latency_increase,
            f"increase > {cfg.max_latency_increase:g}",
            None if change is None else change > cfg.max_latency_increase,
            "seconds, successful requests",
        )
    ]
    ea, eb = share(recent.errors), share(earlier.errors)
    up = None if ea is None or eb is None else ea - eb
    out.append(
        _signal(
            "error_rate",
            "ops",
            earlier,
            ea,
            eb,
            up,
            cfg.max_error_rate_increase,
            f"increase > {cfg.max_error_rate_increase:g}",
            None if up is None else up > cfg.max_error_rate_increase,
        )
    )
    return out
