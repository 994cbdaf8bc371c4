"""Feedback and traffic become training data: `feedback export` (SFT or DPO rows) and `monitor --export-retrain`.

SFT: every corrected answer is a `messages` row (the logged prompt + the correction).
DPO (OpenAI's preference shape: input.messages, preferred_output, non_preferred_output): a correction is preferred
to the answer it corrected; on the same prompt, an answer rated up is preferred to one rated down.
Files are written once (never over an existing --out), atomically; the data audit reads them like any other file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import DataError
from tunesmith.monitor.rows import latest_feedback, prompt_of, prompt_text, served_answer
from tunesmith.outputs import OutputError, claim_file, record_file
from tunesmith.serve.store import RequestLog

if TYPE_CHECKING:
    from tunesmith.config import MonitorSection
    from tunesmith.serve.store import FeedbackRow, RequestRow


@dataclass
class Export:
    """What an export wrote: the file, its row count, and the feedback that could not become a row (and why)."""

    path: Path
    rows: int
    skipped: dict[str, int]


def _answered(requests: dict[str, RequestRow], fb: FeedbackRow, skipped: dict[str, int]) -> RequestRow | None:
    """The request `fb` judges, when it was answered and its content logged; else None, counted in `skipped`."""
    row = requests.get(fb.request_id)
    if row is None:
        why = "request not in the log"
    elif not row.answered:  # a 429, 499 or other error: no answer was given, so none may become a training row
        why = "request answered with an error"
    elif prompt_of(row) is None or row.output is None:
        why = "request content not logged"
    else:
        return row
    skipped[why] = skipped.get(why, 0) + 1
    return None


def corrected_answer(fb: FeedbackRow) -> dict[str, Any] | None:
    """The assistant message a correction gives (its calls, its text), or None without a correction."""
    if fb.tool_calls:
        calls = [
            {
                "id": c.get("id") or f"call_{k}",
                "type": "function",
                "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments", "{}"))},
            }
            for k, c in enumerate(fb.tool_calls)
        ]
        return {"role": "assistant", "content": fb.correction or None, "tool_calls": calls}
    return {"role": "assistant", "content": fb.correction} if fb.correction else None


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _tools(req: RequestRow) -> dict[str, Any]:
    """The functions the request offered, kept with its row (training renders them into the prompt)."""
    return {"tools": req.tools} if req.tools else {}


def sft_rows(requests: dict[str, RequestRow], feedback: list[FeedbackRow]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One messages row per corrected answer (a corrected call included), with the tools its request offered."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for fb in latest_feedback(feedback).values():
        if (fixed := corrected_answer(fb)) is None:
            continue
        req = _answered(requests, fb, skipped)
        if req is not None:
            rows.append({"id": fb.feedback_id, "messages": [*prompt_of(req), fixed], **_tools(req)})  # type: ignore[misc]
    return rows, skipped


def _pair(
    pid: str, prompt: list[dict[str, Any]], good: dict[str, Any], bad: dict[str, Any], tools: dict[str, Any]
) -> dict[str, Any]:
    return {"id": pid, "input": {"messages": prompt}, "preferred_output": [good], "non_preferred_output": [bad], **tools}


def dpo_rows(requests: dict[str, RequestRow], feedback: list[FeedbackRow]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Correction > corrected answer; and per identical prompt (and tools), every answer rated up > every answer rated
    down. Answers are assistant messages: text, or the calls the request returned."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    by_prompt: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    prompts: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    for fb in latest_feedback(feedback).values():
        req = _answered(requests, fb, skipped)
        if req is None:
            continue
        prompt, served, fixed = prompt_of(req) or [], served_answer(req), corrected_answer(fb)
        if fixed is not None and _said(fixed).strip() != _said(served).strip():
            rows.append(_pair(fb.feedback_id, prompt, fixed, served, _tools(req)))
            continue
        # the same prompt offering the same tools (a prompt without tools keys as it always has)
        key = json.dumps([prompt, req.tools] if req.tools else prompt, sort_keys=True)
        prompts[key] = (prompt, _tools(req))
        by_prompt.setdefault(key, {"up": {}, "down": {}})[fb.rating][_said(served)] = served
    for key, rated in by_prompt.items():
        pairs = [(g, b) for g in rated["up"] for b in rated["down"] if g != b]
        if not pairs:
            why = "rating without a counterpart on the same prompt"
            skipped[why] = skipped.get(why, 0) + len(rated["up"]) + len(rated["down"])
        prompt, tools = prompts[key]
        for g, b in pairs:
            pid = "pair-" + hashlib.sha256(json.dumps([key, g, b]).encode()).hexdigest()[:16]
            rows.append(_pair(pid, prompt, rated["up"][g], rated["down"][b], tools))
    return rows, skipped


def _said(message: dict[str, Any]) -> str:
    """What an answer says, to compare answers: its text, or its calls (names and arguments) as JSON."""
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
    return json.dumps(calls) if calls else message.get("content") or ""


def pair_rows(source: str | Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """dpo_rows of the log at `source` (not written)."""
    requests, feedback, _, _ = _read_log(source)
    return dpo_rows(requests, feedback)


def write_new(out: str | Path, rows: list[dict[str, Any]], inputs: list[Path]) -> Path:
    """Write rows as JSONL to a path that must not exist yet (atomic; recorded as tunesmith's output)."""
    if Path(out).expanduser().exists():  # not even an earlier export of ours: each export is kept
        raise OutputError(f"--out {out} already exists", hint="Choose a new file; an export never replaces one.")
    path = claim_file(out, inputs=inputs, overwrite=False)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    record_file(path)
    return Path(path)


def _read_log(source: str | Path) -> tuple[dict[str, RequestRow], list[FeedbackRow], str, list[Path]]:
    """Requests by id (a rollout's shadow answers apart: no client saw them), feedback, the log's name for messages,
    and its file (none for a database) as an input."""
    with RequestLog.open(source) as store:
        requests = {r.request_id: r for r in store.iter_requests() if r.variant != "shadow"}
        return requests, list(store.iter_feedback()), store.location, [store.path] if store.path else []


def export(source: str | Path, to: Literal["sft", "dpo"], out: str | Path) -> Export:
    """Write the feedback in the log at `source` (serve folder, .sqlite file or postgresql:// URL: feedback given to
    any replica) as SFT or DPO rows to `out` (a new file). DataError when nothing qualifies."""
    requests, feedback, db, inputs = _read_log(source)
    rows, skipped = (sft_rows if to == "sft" else dpo_rows)(requests, feedback)
    if not rows:
        what = "corrected answers" if to == "sft" else "corrections or up/down pairs on the same prompt"
        raise DataError(
            f"no {what} in {db} ({len(feedback)} feedback rows)",
            hint="SFT rows come from corrections; DPO rows from corrections and up/down ratings of one prompt.",
        )
    return Export(write_new(out, rows, inputs), len(rows), skipped)


def export_retrain(
    source: str | Path, baseline: Any, cfg: MonitorSection, out: str | Path, until: Any = None, embedder: Any = None
) -> Export:
    """The next training set: every corrected answer, plus the recent window's out-of-distribution prompts with the
    answer served (unless rated down without a correction). Messages rows; review them before training."""
    rows, skipped, db, inputs = retrain_rows(source, baseline, cfg, until, embedder)
    if not rows:
        raise DataError(
            f"nothing to retrain on in {db}: no corrections and no out-of-distribution prompts",
            hint="Correct answers through POST /v1/feedback, or pass --baseline to find drifted prompts.",
        )
    return Export(write_new(out, rows, inputs), len(rows), skipped)


def retrain_rows(
    source: str | Path, baseline: Any, cfg: MonitorSection, until: Any = None, embedder: Any = None
) -> tuple[list[dict[str, Any]], dict[str, int], str, list[Path]]:
    """export_retrain's rows (not written), what was skipped, the log's name and its file."""
    from tunesmith.monitor import drift
    from tunesmith.monitor.traffic import out_of_distribution, read_windows, training_traffic

    requests, feedback, db, inputs = _read_log(source)
    rows, skipped = sft_rows(requests, feedback)
    corrected = {r["id"] for r in rows}
    verdicts = latest_feedback(feedback)
    w = read_windows(source, cfg.window_hours, until)
    candidates = [
        r
        for r in w.recent
        if r.answered
        and r.output
        and prompt_text(r)
        and not (
            r.request_id in verdicts
            and (verdicts[r.request_id].rating == "down" or verdicts[r.request_id].feedback_id in corrected)
        )
    ]
    if baseline is not None and candidates:
        train, _ = training_traffic(baseline)
        flags = out_of_distribution(
            [prompt_text(r) or "" for r in candidates], train.prompts, embedder or drift.embedder_for(cfg)
        )
        rows += [
            {"id": r.request_id, "messages": [*(prompt_of(r) or []), {"role": "assistant", "content": r.output}]}
            for r, off in zip(candidates, flags)
            if off
        ]
    return rows, skipped, db, inputs
