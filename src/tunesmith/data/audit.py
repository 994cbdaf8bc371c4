"""The data audit: one report of blocking errors and warnings, each with a stable code and a place.

`audit()` reads every file (a bad line is a finding; the rest is still read), runs the row
checks (`checks.py`), token checks with the real tokenizer and chat template, duplicate and
train/eval overlap detection (`dedup.py`), balance and size rules, and the cost estimate
(`stats.py`). `preflight()` is what `tunesmith train` runs first: blocking errors refuse the run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunesmith.data import dedup, stats
from tunesmith.data.checks import (
    CODES,
    ERROR,
    WARNING,
    Finding,
    Row,
    TokenInfo,
    check_record,
    check_tokens,
    finding,
    last_answer,
    looks_like_refusal,
    row_tools,
    unanswered,
)
from tunesmith.data.formats import read_records
from tunesmith.data.reasoning import sources
from tunesmith.data.tool_checks import tool_counts, tool_stats
from tunesmith.data.tool_shapes import load_tools_file
from tunesmith.errors import DataError
from tunesmith.train import speed

if TYPE_CHECKING:
    from tunesmith.train.method import Method

__all__ = ["CODES", "AuditReport", "Finding", "Rows", "audit", "audit_recipe", "load_rows", "preflight"]

log = logging.getLogger(__name__)

MIN_EXAMPLES, RECOMMENDED_EXAMPLES = 10, 50
LABEL_MAJORITY, REFUSAL_SHARE = 0.8, 0.05


@dataclass
class AuditReport:
    """Findings (errors block training, warnings do not) and the dataset statistics."""

    files: list[str]
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)  # per-example token counts, for histograms
    samples: list[Any] = field(default_factory=list)  # data.show.Shown: rows as training sees them (mask view)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def unreadable(self) -> bool:
        return any(f.code == "file_unreadable" for f in self.findings)

    def blocking(self, strict: bool = False) -> list[Finding]:
        return list(self.findings) if strict else self.errors

    def by_code(self) -> dict[str, dict[str, Any]]:
        """code -> {severity, count, description, first (up to 5 places)}; errors first."""
        groups: dict[str, dict[str, Any]] = {}
        for f in self.findings:
            g = groups.setdefault(f.code, {"severity": f.severity, "count": 0, "description": CODES[f.code][1], "first": []})
            g["count"] += 1
            if f.severity == ERROR:
                g["severity"] = ERROR  # over_max_length is an error under policy `error`
            if len(g["first"]) < 5:
                g["first"].append(f"{f.where}: {f.message}")
        return dict(sorted(groups.items(), key=lambda kv: (kv[1]["severity"] != ERROR, -kv[1]["count"], kv[0])))

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "ok": not self.errors,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "by_code": self.by_code(),
            "findings": [f.as_dict() for f in self.findings],
            "stats": self.stats,
        }


@dataclass
class Rows:
    """The usable rows of some files, with the findings met while reading them."""

    rows: list[Row] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    n_records: int = 0

    def keys(self) -> list[str]:
        return [dedup.row_key(r.messages, r.rejected) for r in self.rows]

    def texts(self) -> list[str]:
        return [dedup.row_text(r.messages + (r.rejected or [])) for r in self.rows]


def load_rows(paths: list[str], tools: list[dict[str, Any]] | None = None) -> Rows:
    """Read and format-check every row of the files (`tools`: the files' own, data.tools, for rows that name none);
    an unreadable file is a `file_unreadable` finding."""
    out = Rows()
    for path in paths:
        try:
            for rec in read_records(path):
                out.n_records += 1
                row, found = check_record(rec, tools)
                out.findings.extend(found)
                if row is not None:
                    out.rows.append(row)
        except DataError as exc:
            out.findings.append(finding("file_unreadable", str(path), None, exc.message))
    return out


SAMPLES = 5  # rows shown with their mask in the HTML report and the studio, plus up to as many flagged ones
# Findings about what is trained: a row that has one is shown with its mask, so the report shows the problem.
MASK_CODES = {"eos_not_trained", "empty_trace_trained", "tool_result_trained", "whitespace_only_trained"}


@dataclass
class TokenPass:
    """What the token checks saw: per-row token counts, the turn and trace counts summed, sampled mask views."""

    infos: list[TokenInfo] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    samples: list[Any] = field(default_factory=list)


def _token_pass(
    rows: Rows,
    tokenizer: Any,
    max_length: int | None,
    overlong: str,
    method: Method[Any] | None,
    room: int,
    reasoning: str,
    training: bool = True,
) -> TokenPass:
    """training: these are training rows (a prompt-only row without an answer to train is dropped, `no_answer`); the
    held-out rows may be prompts alone (scored without a reference)."""
    from tunesmith.data.show import show_messages

    out = TokenPass()
    flagged = 0
    for row in rows.rows:
        dropped = unanswered(row, method) if training else None
        info, found = dropped or check_tokens(row, tokenizer, max_length, overlong, method, room, reasoning)
        out.infos.append(info)
        out.counts.update(info.counts)
        rows.findings.extend(found)
        wanted = row.trained and (len(out.samples) < SAMPLES or (flagged < SAMPLES and {f.code for f in found} & MASK_CODES))
        if wanted and not any(f.code == "template_refuses_row" for f in found):
            flagged += len(out.samples) >= SAMPLES
            out.samples.append(show_messages(tokenizer, row.where, row.messages, max_length, overlong, reasoning, row_tools(row)))
    return out


def _reasoning_stats(rows: Rows, counts: Counter[str], policy: str) -> dict[str, Any] | None:
    """Where the traces came from (reasoning_content, reasoning, thinking, inline <think>) and what training does
    with them (data.template's counts); None when no row carries one."""
    found: Counter[str] = Counter()
    for row in rows.rows:
        found.update(sources(row.obj.get("messages") or row.obj.get("conversations")))
    traces = {k: v for k, v in counts.items() if "trace" in k and v}
    if not found and not traces:
        return None
    return {"policy": policy, "sources": dict(found), **traces}


def _method_stats(method: Method[Any] | None) -> dict[str, Any]:
    """Whose length policy measured the rows; nothing for an audit without a method (rendered conversations)."""
    if method is None:
        return {}
    return {
        "method": method.name,
        "measured_as": method.measured_as,
        "samples_completions": method.samples_completions,  # no fixed answer is trained: no EOS to count
    }


def _token_stats(infos: list[TokenInfo], max_length: int | None, tokenizer: Any, method: Method[Any] | None) -> dict[str, Any]:
    dropped = Counter(i.dropped for i in infos if i.dropped)
    kept = [i for i in infos if not i.dropped and i.eos_trained is not None]
    return {
        **_method_stats(method),
        "max_length": max_length,
        "total_tokens": stats.distribution([i.total for i in infos]),
        "assistant_tokens": stats.distribution([i.assistant for i in infos]),
        "n_too_long": sum(max_length is not None and i.total > max_length for i in infos),
        "tokens_lost": sum(i.lost for i in infos),
        "dropped_overlong": dropped.get("overlong", 0),
        "dropped_no_trained_tokens": dropped.get("no_trained_tokens", 0),
        "kept_tokens": sum(i.kept_total for i in infos),
        "kept_trained_tokens": sum(i.kept_trained for i in infos),
        "pad_is_eos": tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id,
        # Counted from the loss masks of the audited rows (kept rows with a fixed answer; grpo has none).
        "eos_trained_rows": sum(bool(i.eos_trained) for i in kept),
        "eos_checked_rows": len(kept),
    }


def _duplicate_findings(rows: Rows, threshold: float, near: bool) -> dict[str, Any]:
    dups = dedup.find_duplicates(rows.keys(), rows.texts(), threshold, near)
    r = rows.rows
    for i, j in dups.exact:
        rows.findings.append(finding("exact_duplicate", r[i].file, r[i].line, f"same row as {r[j].where}"))
    for i, j, sim in dups.near:
        rows.findings.append(finding("near_duplicate", r[i].file, r[i].line, f"~{sim:.2f} similar to {r[j].where}"))
    return {
        "exact_duplicates": len(dups.exact),
        "near_duplicates": len(dups.near),
        "near_duplicate_pairs": [[r[i].where, r[j].where, sim] for i, j, sim in dups.near[:100]],
    }


def _overlap_findings(train: Rows, evaluation: Rows, threshold: float, near: bool) -> dict[str, Any]:
    ov = dedup.find_overlap(train.keys(), train.texts(), evaluation.keys(), evaluation.texts(), threshold, near)
    t, e = train.rows, evaluation.rows
    for j, i in ov.exact:
        evaluation.findings.append(finding("eval_overlap", e[j].file, e[j].line, f"also in train at {t[i].where}"))
    for j, i, sim in ov.near:
        similar = f"~{sim:.2f} similar to train {t[i].where}"
        evaluation.findings.append(finding("eval_near_overlap", e[j].file, e[j].line, similar))
    return {
        "eval_overlap": len(ov.exact),
        "eval_near_overlap": len(ov.near),
        "eval_near_overlap_pairs": [[e[j].where, t[i].where, sim] for j, i, sim in ov.near[:100]],
    }


def _dataset_findings(train: Rows, files: list[str], infos: list[TokenInfo], label_field: str | None) -> dict[str, Any]:
    n = len(train.rows)
    where = files[0] if len(files) == 1 else ", ".join(files)
    readable = not any(f.code == "file_unreadable" for f in train.findings)  # an unreadable file is reported once
    if (train.n_records or readable) and n < MIN_EXAMPLES:
        empty = "" if train.n_records else " (no rows at all)"
        too_few = f"{n} usable examples{empty}; at least {MIN_EXAMPLES} are required"
        train.findings.append(finding("too_few_examples", where, None, too_few))
    elif train.n_records and n < RECOMMENDED_EXAMPLES:
        train.findings.append(finding("few_examples", where, None, f"{n} usable examples; {RECOMMENDED_EXAMPLES}+ recommended"))
    if infos and all(i.dropped for i in infos):
        none_left = f"all {n} usable rows are dropped by the length policy or label checks"
        train.findings.append(finding("no_trainable_rows", where, None, none_left))
    answered = [r for r in train.rows if r.trained]
    refusals = sum(looks_like_refusal(last_answer(r)) for r in answered)
    labels = [r.obj.get(label_field) for r in train.rows] if label_field else []
    bal = stats.balance(labels, [i.first_answer_token for i in infos], refusals, len(answered))
    if label_field and labels and bal["label_majority_share"] >= LABEL_MAJORITY:
        top = next(iter(bal["label_counts"]))
        train.findings.append(
            finding("label_imbalance", where, None, f"`{label_field}` = {top!r} in {bal['label_majority_share']:.0%} of rows")
        )
    if answered and refusals and refusals / len(answered) >= REFUSAL_SHARE:
        train.findings.append(finding("refusal_ratio", where, None, f"{refusals} of {len(answered)} answers look like refusals"))
    return bal


def audit(
    train: list[str],
    eval_files: list[str] | None = None,
    tokenizer: Any = None,
    max_length: int | None = 1024,
    overlong: str = "drop",
    label_field: str | None = None,
    near_threshold: float = dedup.DEFAULT_THRESHOLD,
    near: bool = True,
    cost: dict[str, Any] | None = None,
    on_stage: Callable[[str], None] | None = None,
    method: Method[Any] | None = None,
    completion_budget: int = 0,
    reasoning: str = "train",
    tools: list[dict[str, Any]] | None = None,
) -> AuditReport:
    """Audit training files (and eval files). Without a tokenizer the token checks are skipped.

    cost: keyword arguments for `stats.cost_estimate` (params, gpu, price_per_hour, epochs, adapter, bf16, ...).
    method: the method whose length policy the token checks apply (Method.fit_row, data.lengths); None: each row
    measured as the rendered conversation with its loss mask, as the demonstration methods (SFT) measure it;
    completion_budget: the room each prompt needs for a sampled completion (grpo.max_completion_length);
    reasoning: data.reasoning (train | mask | drop), as training applies it; tools: the tools every row that names
    none offers (data.tools).
    """
    stage = on_stage or (lambda _s: None)
    eval_files = list(eval_files or [])
    stage("reading")
    tr, ev = load_rows(list(train), tools), load_rows(eval_files, tools)
    report = AuditReport(list(map(str, train)) + list(map(str, eval_files)))
    st: dict[str, Any] = {
        "rows": {"train": tr.n_records, "train_usable": len(tr.rows)},
        "shapes": dict(Counter(r.shape for r in tr.rows)),
    }
    if eval_files:
        st["rows"].update(eval=ev.n_records, eval_usable=len(ev.rows))
    st["messages_per_example"] = stats.distribution([len(r.messages) for r in tr.rows])
    st["no_system_message"] = sum(not any(m["role"] == "system" for m in r.messages) for r in tr.rows)
    st["no_user_message"] = sum(not any(m["role"] == "user" for m in r.messages) for r in tr.rows)
    if (tool_section := tool_stats(sum((tool_counts(r.messages, r.tools) for r in tr.rows), Counter()))) is not None:
        st["tools"] = tool_section
    infos: list[TokenInfo] = []
    if tokenizer is not None:
        stage("tokenizing")
        if tokenizer.eos_token_id is None:
            tr.findings.append(finding("no_eos_token", None, None, "the tokenizer defines no EOS token"))
        passed = _token_pass(tr, tokenizer, max_length, overlong, method, completion_budget, reasoning)
        infos, report.samples = passed.infos, passed.samples
        st["tokens"] = _token_stats(infos, max_length, tokenizer, method)
        st["tokens"]["turns"] = {k: v for k, v in sorted(passed.counts.items()) if "turn" in k and v}
        report.lengths = {"total": [i.total for i in infos], "assistant": [i.assistant for i in infos]}
        if ev.rows:
            ev_infos = _token_pass(ev, tokenizer, max_length, overlong, method, completion_budget, reasoning, False).infos
            st["eval_tokens"] = _token_stats(ev_infos, max_length, tokenizer, method)
        if (traces := _reasoning_stats(tr, passed.counts, reasoning)) is not None:
            st["reasoning"] = traces
    stage("deduplicating")
    st["duplicates"] = _duplicate_findings(tr, near_threshold, near)
    if ev.rows:
        st["eval_duplicates"] = _duplicate_findings(ev, near_threshold, near)
        st["overlap"] = _overlap_findings(tr, ev, near_threshold, near)
    st["balance"] = _dataset_findings(tr, [str(p) for p in train], infos, label_field)
    if infos and cost is not None:
        kept = [i for i in infos if not i.dropped]
        st["cost"] = stats.cost_estimate(sum(i.kept_total for i in kept), sum(i.kept_trained for i in kept), len(kept), **cost)
    report.findings = _ordered(tr.findings + ev.findings)
    report.stats = st
    return report


def _ordered(findings: list[Finding]) -> list[Finding]:
    # File order, then line: a report reads like the file (dataset-level findings last).
    return sorted(findings, key=lambda f: (f.file is None, f.file or "", f.line is None, f.line or 0))


def audit_recipe(recipe: Any, method: Method[Any], tokenizer: Any, **kwargs: Any) -> AuditReport:
    """Audit a recipe's train (and eval) files with its max_length, over-length and reasoning policies, its
    `method`'s length policy (the recipe's own), and its packing (rows that could attend to each other)."""
    d = recipe.data
    report = audit(
        d.train,
        [d.eval] if d.eval else [],
        tokenizer,
        d.max_length,
        d.overlong,
        method=method,
        completion_budget=method.completion_room(recipe),
        reasoning=d.reasoning,
        tools=load_tools_file(str(d.tools)) if d.tools else None,
        **kwargs,
    )
    if (why := packing_leaks(recipe, method)) is not None:
        report.findings.append(finding("packed_rows_attend", "(recipe)", None, why))
    return report


def packing_leaks(recipe: Any, method: Method[Any]) -> str | None:
    """Why the recipe's packed rows (`method`: the recipe's, when it packs rows) could attend to each other, or None.
    speed.packing padding_free concatenates a
    batch's rows and keeps them apart by position_ids restarting at 0: varlen attention runs each row alone, and
    transformers' own models build a per-row mask from those position_ids (masking_utils.find_packed_sequence_indices).
    Remote modeling code, or a transformers without that mask, attends across the rows."""
    if not method.packs_rows or speed.batching(recipe) != "padding_free":
        return None
    if speed.packed_attention(recipe) == "varlen":
        return None
    if recipe.model.trust_remote_code:
        return "speed.attention mask with the model's own (remote) modeling code, which need not build the per-row mask"
    from transformers import masking_utils

    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return "this transformers builds no per-row mask from position_ids: set speed.attention: varlen or speed.packing: off"
    return None


def preflight(recipe: Any, method: Method[Any], tokenizer: Any, force: bool = False, max_listed: int = 20) -> AuditReport:
    """Run the audit before training (`method`: the recipe's); blocking errors raise DataError unless `force`."""
    report = audit_recipe(recipe, method, tokenizer)
    for code, g in report.by_code().items():
        if g["severity"] == WARNING:
            log.warning("data check: %d x %s (%s)", g["count"], code, g["first"][0])
    errors = report.errors
    if not errors:
        return report
    lines = [f"  - {f.where}: [{f.code}] {f.message}" for f in errors[:max_listed]]
    more = f"\n  ... and {len(errors) - max_listed} more" if len(errors) > max_listed else ""
    text = f"data check found {len(errors)} blocking error(s):\n" + "\n".join(lines) + more
    if force:
        log.warning("%s\n(--force: training anyway)", text)
        return report
    raise DataError(text, hint="Fix them (`tunesmith data fix FILE --out CLEAN`), or pass --force to train anyway.")
