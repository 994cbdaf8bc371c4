"""Exact duplicates (SHA-256 of the normalised row) and near-duplicates (MinHash + LSH via datasketch).

Near-duplicate similarity is the estimated Jaccard similarity of word 3-gram sets over the
user/assistant text; system prompts are left out because one shared system prompt would make
every row of a dataset look alike.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NUM_PERM = 64
DEFAULT_THRESHOLD = 0.8


def normalise(text: str) -> str:
    """NFC, whitespace collapsed and stripped: formatting noise must not hide a duplicate."""
    return unicodedata.normalize("NFC", " ".join(text.split()))


def _text(msg: dict[str, Any]) -> str:
    content = msg.get("content")
    text = normalise(content) if isinstance(content, str) else ""
    calls = msg.get("tool_calls") or msg.get("function_call")
    return text + (json.dumps(calls, sort_keys=True) if calls else "")


def row_key(messages: list[dict[str, Any]], extra: list[dict[str, Any]] | None = None) -> str:
    """SHA-256 of the normalised conversation (role, name, text of each message), plus `extra` (a rejected side)."""
    parts = [[m.get("role"), m.get("name"), _text(m)] for m in messages + (extra or [])]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def row_text(messages: list[dict[str, Any]]) -> str:
    """The text compared for near-duplicates: every non-system message."""
    return " ".join(_text(m) for m in messages if m.get("role") != "system").lower()


def shingles(text: str, k: int = 3) -> list[bytes]:
    words = text.split()
    if len(words) <= k:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i : i + k]).encode("utf-8") for i in range(len(words) - k + 1)})


def _minhashes(texts: Iterable[str]) -> list[Any]:
    from datasketch import MinHash

    # bulk() reuses one set of permutations: building them per row would dominate the run time.
    hashes: list[Any] = MinHash.bulk((shingles(t) for t in texts), num_perm=NUM_PERM)
    return hashes


@dataclass
class Duplicates:
    """Pairs (later index, earlier index[, similarity]) within one list of rows."""

    exact: list[tuple[int, int]] = field(default_factory=list)
    near: list[tuple[int, int, float]] = field(default_factory=list)


def _lsh(threshold: float) -> Any:
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=NUM_PERM)


def find_duplicates(keys: list[str], texts: list[str], threshold: float = DEFAULT_THRESHOLD, near: bool = True) -> Duplicates:
    """Exact pairs by key, near pairs by MinHash LSH (exact copies are not reported again as near)."""
    out = Duplicates()
    first: dict[str, int] = {}
    unique: list[int] = []
    for i, key in enumerate(keys):
        if key in first:
            out.exact.append((i, first[key]))
        else:
            first[key] = i
            unique.append(i)
    if not near or len(unique) < 2:
        return out
    hashes = _minhashes(texts[i] for i in unique)
    lsh = _lsh(threshold)
    for pos, (i, mh) in enumerate(zip(unique, hashes)):
        best = None
        for cand in lsh.query(mh):
            sim = mh.jaccard(hashes[cand])
            if sim >= threshold and (best is None or sim > best[1]):
                best = (unique[cand], sim)
        if best is not None:
            out.near.append((i, best[0], round(best[1], 3)))
        lsh.insert(pos, mh)
    return out


def find_overlap(
    train_keys: list[str],
    train_texts: list[str],
    eval_keys: list[str],
    eval_texts: list[str],
    threshold: float = DEFAULT_THRESHOLD,
    near: bool = True,
) -> Duplicates:
    """Pairs (eval index, train index[, similarity]) of eval rows also present (exactly or nearly) in train."""
    out = Duplicates()
    index: dict[str, int] = {}
    for i, key in enumerate(train_keys):
        index.setdefault(key, i)
    rest = []
    for j, key in enumerate(eval_keys):
        if key in index:
            out.exact.append((j, index[key]))
        else:
            rest.append(j)
    if not near or not rest or not train_keys:
        return out
    lsh = _lsh(threshold)
    train_hashes = _minhashes(train_texts)
    for i, mh in enumerate(train_hashes):
        lsh.insert(i, mh)
    for j, mh in zip(rest, _minhashes(eval_texts[j] for j in rest)):
        sims = [(i, mh.jaccard(train_hashes[i])) for i in lsh.query(mh)]
        sims = [s for s in sims if s[1] >= threshold]
        if sims:
            i, sim = max(sims, key=lambda s: s[1])
            out.near.append((j, i, round(sim, 3)))
    return out


class NearIndex:
    """An incremental near-duplicate index (used to screen generated candidates)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        self.threshold = threshold
        self._lsh = _lsh(threshold)
        self._hashes: list[Any] = []
        self._labels: list[str] = []
        self._keys: dict[str, str] = {}

    def match(self, key: str, text: str) -> tuple[str, str] | None:
        """('exact'|'near', label of the match) when the row is (nearly) already indexed, else None."""
        if key in self._keys:
            return "exact", self._keys[key]
        mh = _minhashes([text])[0]
        for cand in self._lsh.query(mh):
            if mh.jaccard(self._hashes[cand]) >= self.threshold:
                return "near", self._labels[cand]
        return None

    def add(self, key: str, text: str, label: str) -> None:
        self._keys.setdefault(key, label)
        mh = _minhashes([text])[0]
        self._lsh.insert(len(self._hashes), mh)
        self._hashes.append(mh)
        self._labels.append(label)
