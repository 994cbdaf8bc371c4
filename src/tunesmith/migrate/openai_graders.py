"""OpenAI graders -> tunesmith's eval graders (tunesmith.eval.graders), with what could not be carried over.

tunesmith's graders take OpenAI's definitions as they are: templates read any field of a row as `item.<field>`
(every field of the held-out row, and of the training row when the grader is the GRPO reward), plus item.reference,
item.reference_json, item.input and item.id. So a grader is translated only where the two differ (a judge model
named by the user, OpenAI's `^` power operator, the `neq` spelling) and checked: a field no row has, a sample field
tunesmith does not produce, a metric it does not compute is listed as not carried over, never dropped silently.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import DataError, RecipeError
from tunesmith.eval.graders import calculate, load_graders
from tunesmith.migrate.report import GraderReport, Unmapped

TUNESMITH_ITEM = ("reference", "reference_json", "input", "id")
TUNESMITH_SAMPLE = ("output_text", "output_json")
TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
_MODEL = {"name", "type", "model", "input", "sampling_params"}
KEYS = {
    "string_check": {"name", "type", "input", "reference", "operation"},
    "text_similarity": {"name", "type", "input", "reference", "evaluation_metric", "pass_threshold"},
    "python": {"name", "type", "source", "pass_threshold", "image_tag"},
    "score_model": _MODEL | {"range", "pass_threshold"},
    "label_model": _MODEL | {"labels", "passing_labels"},
    "multi": {"name", "type", "graders", "calculate_output", "pass_threshold"},
}

_BLOCK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_ITEM = re.compile(r"\bitem(?:\.([A-Za-z_]\w*)|\s*\[\s*(['\"])(\w+)\2\s*\])")
_SAMPLE = re.compile(r"\bsample(?:\.([A-Za-z_]\w*)|\s*\[\s*(['\"])(\w+)\2\s*\])")
_PY_ITEM = re.compile(r"\bitem(?:\s*\[\s*(['\"])(\w+)\1\s*\]|\.get\(\s*(['\"])(\w+)\3)")


def _texts(grader: dict[str, Any]) -> list[str]:
    """The template strings of one grader (not its sub-graders)."""
    out = [grader.get(k) for k in ("input", "reference")]
    if isinstance(grader.get("input"), list):
        out = [m.get("content") for m in grader["input"] if isinstance(m, dict)]
        out = [p.get("text") if isinstance(p, dict) else p for c in out for p in (c if isinstance(c, list) else [c])]
    return [t for t in out if isinstance(t, str)]


def subgraders(grader: dict[str, Any]) -> dict[str, Any]:
    """A multi grader's sub-graders by variable name (OpenAI documents a mapping; its SDK types one grader)."""
    subs = grader.get("graders")
    if isinstance(subs, dict) and "type" in subs:
        return {str(subs.get("name") or "grader"): subs}
    return dict(subs) if isinstance(subs, dict) else {}


def _walk(grader: dict[str, Any]) -> list[dict[str, Any]]:
    return [grader] + [g for sub in subgraders(grader).values() if isinstance(sub, dict) for g in _walk(sub)]


def item_fields(grader: dict[str, Any]) -> list[str]:
    """The row fields the grader reads (templates' item.X, python's item["X"] / item.get("X")), first use first."""
    found: list[str] = []
    for g in _walk(grader):
        for text in _texts(g):
            for block in _BLOCK.findall(text):
                found += [m.group(1) or m.group(3) for m in _ITEM.finditer(block)]
        if isinstance(g.get("source"), str):
            found += [m.group(2) or m.group(4) for m in _PY_ITEM.finditer(g["source"])]
    return list(dict.fromkeys(found))


def sample_fields(grader: dict[str, Any]) -> list[str]:
    found = [
        m.group(1) or m.group(3) for g in _walk(grader) for t in _texts(g) for b in _BLOCK.findall(t) for m in _SAMPLE.finditer(b)
    ]
    return list(dict.fromkeys(found))


@dataclass
class Translation:
    graders: list[dict[str, Any]] = field(default_factory=list)
    reports: list[GraderReport] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)


class _Skip(Exception):
    """This grader cannot be translated: (why, instead)."""


def _one(g: dict[str, Any], fields: set[str] | None, judge: str | None, where: str, notes: list[Unmapped]) -> dict[str, Any]:
    kind = g.get("type")
    if kind not in KEYS:
        raise _Skip(f"unknown grader type {kind!r}", "not scored")
    out = {k: copy.deepcopy(v) for k, v in g.items() if k in KEYS[kind]}
    out.setdefault("name", where.rsplit(".", 1)[-1])
    for k in sorted(set(g) - KEYS[kind]):
        notes.append(Unmapped(field=f"{where}.{k}", value=g[k], why=f"not a {kind} field tunesmith reads", instead="ignored"))
    unsupported = [s for s in sample_fields(g) if s not in TUNESMITH_SAMPLE]
    if unsupported:
        raise _Skip(f"reads sample.{', sample.'.join(unsupported)}", "tunesmith's samples have output_text and output_json only")
    if fields is not None:
        _unreachable([f for f in item_fields({k: v for k, v in g.items() if k != "graders"}) if f not in fields], fields)
    if kind == "string_check" and out.get("operation") == "neq":
        out["operation"] = "ne"  # the graders guide writes neq; the API's name is ne
    if kind == "text_similarity" and out.get("evaluation_metric") == "meteor":
        raise _Skip("evaluation_metric meteor is not computed by tunesmith", "not scored; rouge_l or bleu are")
    if kind == "python":
        notes.append(
            Unmapped(
                field=f"{where}.image_tag",
                value=g.get("image_tag"),
                why="the hosted sandbox image has no equivalent here",
                instead="the source runs in a separate process of this Python, limited to timeout_s (10) seconds per "
                "output and memory_mb (2048) MiB, as the hosted sandbox was; it is not cut off from the network",
            )
        )
    if kind in ("score_model", "label_model"):
        if judge is None:
            raise _Skip(f"{kind} needs a judge model", "not scored: import again with --judge MODEL_OR_URL")
        out["model"] = judge
        if g.get("sampling_params"):
            why = "tunesmith's judge decodes greedily"
            notes.append(Unmapped(field=f"{where}.sampling_params", value=g["sampling_params"], why=why, instead="greedy"))
    if kind == "multi":
        subs = subgraders(g)
        out["graders"] = {k: _one(s, fields, judge, f"{where}.graders.{k}", notes) for k, s in subs.items()}
        formula = str(out.get("calculate_output", "")).replace("^", "**")  # OpenAI's power operator
        out["calculate_output"] = formula
        _check_formula(formula, list(subs))
    return out


def _unreachable(missing: list[str], fields: set[str]) -> None:
    if not missing:
        return
    have = ", ".join(sorted(fields)) or "none"
    raise _Skip(
        f"reads item.{', item.'.join(sorted(set(missing)))}, which not every row has", f"not scored: the rows have {have}"
    )


def _check_formula(formula: str, names: list[str]) -> None:

    try:
        calculate(formula, {n: 0.5 for n in names})
    except (RecipeError, SyntaxError, ZeroDivisionError, ValueError) as exc:
        msg = exc.problems[0][1] if isinstance(exc, RecipeError) else str(exc)
        raise _Skip(f"calculate_output {formula!r}: {msg}", "not scored") from None


def translate(graders: list[tuple[str, dict[str, Any]]], fields: set[str] | None, judge: str | None) -> Translation:
    """Translate (where, grader) pairs; each is validated by tunesmith's own grader loader. `fields`: what a grader
    may read as item.<field> (tunesmith's own item keys and the fields every row has); None: not checked."""
    out = Translation()
    for where, g in graders:
        name, kind = (str(g.get("name") or where), str(g.get("type"))) if isinstance(g, dict) else (where, "?")
        try:
            if not isinstance(g, dict):
                raise _Skip("a grader must be a JSON object", "not scored")
            one = _one(g, fields, judge, where, out.unmapped)
            one["name"] = _unique(name, [x["name"] for x in out.graders], out.unmapped, where)
            load_graders([one])
        except _Skip as skip:
            why, instead = skip.args
            out.unmapped.append(Unmapped(field=where, value=_brief(g), why=why, instead=instead))
            out.reports.append(GraderReport(name=name, type=kind))
            continue
        except ValueError as exc:
            out.unmapped.append(Unmapped(field=where, value=_brief(g), why=str(exc), instead="not scored"))
            out.reports.append(GraderReport(name=name, type=kind))
            continue
        out.graders.append(one)
        out.reports.append(GraderReport(name=one["name"], type=kind, used_as=["eval"]))
    return out


def _unique(name: str, taken: list[str], notes: list[Unmapped], where: str) -> str:
    if name not in taken:
        return name
    new = next(f"{name}_{i}" for i in range(2, 1000) if f"{name}_{i}" not in taken)
    notes.append(Unmapped(field=f"{where}.name", value=name, why="grader names must be unique", instead=f"named {new}"))
    return new


def _brief(g: Any) -> Any:
    return {"type": g.get("type"), "name": g.get("name")} if isinstance(g, dict) else g


def needs_judge(grader: dict[str, Any]) -> bool:
    return any(g.get("type") in ("score_model", "label_model") for g in _walk(grader))


def load_grader_file(path: Any) -> list[dict[str, Any]]:
    """The graders in a --grader file: one grader object, a list, or {"graders": [...]} (DataError when unreadable)."""
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"--grader {path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"--grader {path}: not a JSON grader file ({exc})") from None
    if isinstance(data, dict) and "graders" in data and "type" not in data:
        data = data["graders"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(g, dict) for g in items):
        raise DataError(f'--grader {path}: expected a grader object, a list of them, or {{"graders": [...]}}')
    return items


def eval_graders(path: Any, judge: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The graders of an OpenAI grader file as tunesmith eval graders (`tunesmith eval --grader`), and one line per
    grader or setting that could not be carried over. Model graders ask `judge`."""
    from pathlib import Path

    pairs = [(f"{Path(path).name}[{i}]", g) for i, g in enumerate(load_grader_file(path))]
    t = translate(pairs, None, judge)
    return t.graders, [f"{u.field}: {u.why}; {u.instead}" for u in t.unmapped]
