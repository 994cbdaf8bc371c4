"""Statistics of a blind review: Wilson interval for a win rate, Cohen's and Fleiss' kappa for agreement.

Pure functions over plain counts and label lists, so each is tested against hand-worked examples.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None with no items, 1.0 when chance agreement is total."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa: each item lists the labels its raters gave (the same number of raters per item, at least 2)."""
    if not items:
        return None
    m = len(items[0])
    if m < 2 or any(len(labels) != m for labels in items):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    n = len(items)
    totals: Counter[str] = Counter()
    p_items = []
    for labels in items:
        counts = Counter(labels)
        totals.update(counts)
        p_items.append((sum(c * c for c in counts.values()) - m) / (m * (m - 1)))
    p_bar = sum(p_items) / n
    p_e = sum((t / (n * m)) ** 2 for t in totals.values())
    if p_e >= 1.0:
        return 1.0 if p_bar >= 1.0 else 0.0
    return (p_bar - p_e) / (1 - p_e)
