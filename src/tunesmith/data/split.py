"""`data split`: a deterministic, deduplicated train/eval split, optionally stratified by a field.

Deterministic: rows are ordered by the hash of their content before the seeded shuffle (the order training holds
rows out in, data.dataset.held_out_order), so reordering the file does not change which rows are held out. Deduplicated: exact copies are
dropped, and near-duplicates are kept together on one side, so no eval row has a near twin
in train. Stratified: each value of the field is split separately with the same fraction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith import outputs
from tunesmith.data import dedup
from tunesmith.data.audit import load_rows
from tunesmith.data.convert import write_rows
from tunesmith.data.dataset import held_out_order
from tunesmith.errors import DataError


@dataclass
class SplitResult:
    train: Path
    eval: Path
    n_train: int = 0
    n_eval: int = 0
    dropped_invalid: int = 0
    dropped_exact_duplicates: int = 0
    near_duplicate_groups: int = 0  # groups of near-duplicates kept on one side
    strata: dict[str, dict[str, int]] = field(default_factory=dict)  # value -> {train, eval}


def _groups(n: int, near_pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Union-find over near-duplicate pairs: each group lands on one side of the split."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in near_pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[root(i)].append(i)
    return list(groups.values())


def _targets(src: Path, out_dir: str | Path | None) -> tuple[Path, Path]:
    ext = "".join(src.suffixes[-2:]) if src.suffix == ".gz" else src.suffix
    stem = src.name[: -len(ext)] if ext else src.name
    folder = Path(out_dir) if out_dir else src.parent
    return folder / f"{stem}.train{ext}", folder / f"{stem}.eval{ext}"


def split_file(
    src: str | Path,
    eval_fraction: float = 0.1,
    seed: int = 42,
    stratify: str | None = None,
    out_dir: str | Path | None = None,
    near: bool = True,
    near_threshold: float = dedup.DEFAULT_THRESHOLD,
    overwrite: bool = False,
) -> SplitResult:
    """Write `<stem>.train.<ext>` and `<stem>.eval.<ext>` next to `src` (or into out_dir).

    Both must be new (or, with overwrite, earlier tunesmith outputs); checked before anything is read or written.
    """
    if not 0 < eval_fraction < 1:
        raise DataError(f"--eval must be between 0 and 1, got {eval_fraction}")
    src = Path(src)
    targets = _targets(src, out_dir)
    for dest in targets:
        outputs.claim_file(dest, inputs=[src], overwrite=overwrite, what="split output")
    loaded = load_rows([str(src)])
    if any(f.code == "file_unreadable" for f in loaded.findings):
        raise DataError(next(f.message for f in loaded.findings if f.code == "file_unreadable"))
    rows = loaded.rows
    keys, texts = loaded.keys(), loaded.texts()
    dups = dedup.find_duplicates(keys, texts, near_threshold, near)
    exact = {i for i, _ in dups.exact}
    unique = [i for i in range(len(rows)) if i not in exact]
    pos = {i: p for p, i in enumerate(unique)}
    near_pairs = [(pos[i], pos[j], s) for i, j, s in dups.near if i in pos and j in pos]
    groups = [[unique[p] for p in g] for g in _groups(len(unique), near_pairs)]

    strata: dict[str, list[list[int]]] = defaultdict(list)
    for g in groups:
        value = rows[g[0]].obj.get(stratify) if stratify else None
        strata[str(value)].append(g)
    train_idx, eval_idx = [], []
    result_strata: dict[str, dict[str, int]] = {}
    for value in sorted(strata):
        # The order training holds rows out in (content, then a seeded shuffle): without near-duplicates or strata,
        # the eval side is exactly what a recipe with this eval_fraction and seed holds out of the same file.
        groups_here = strata[value]
        bucket = [groups_here[i] for i in held_out_order([min(keys[i] for i in g) for g in groups_here], seed)]
        size = sum(len(g) for g in bucket)
        target = max(1, round(size * eval_fraction)) if size > 1 else 0
        taken = 0
        for g in bucket:
            if taken + len(g) <= target:
                eval_idx.extend(g)
                taken += len(g)
            else:
                train_idx.extend(g)
        result_strata[value] = {"train": size - taken, "eval": taken}
    if not eval_idx or not train_idx:
        raise DataError(f"{src}: {len(unique)} distinct rows cannot be split into non-empty train and eval sets")
    result = SplitResult(*targets)
    write_rows(result.train, [rows[i].obj for i in sorted(train_idx, key=lambda i: (rows[i].file, rows[i].line))])
    write_rows(result.eval, [rows[i].obj for i in sorted(eval_idx, key=lambda i: (rows[i].file, rows[i].line))])
    outputs.record_file(result.train)
    outputs.record_file(result.eval)
    result.n_train, result.n_eval = len(train_idx), len(eval_idx)
    result.dropped_invalid = loaded.n_records - len(rows)
    result.dropped_exact_duplicates = len(exact)
    result.near_duplicate_groups = sum(len(g) > 1 for g in groups)
    result.strata = result_strata if stratify else {}
    return result
