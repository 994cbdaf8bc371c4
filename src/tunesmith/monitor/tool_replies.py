"""Tool calls in served answers, judged without a reference: what a rollout (and the monitor's variant table) can
say about live traffic that offered `tools`.

Each answered, content-logged request that offered tools is read back as eval reads a completion
(tunesmith.eval.tool_metrics.completion_turn: the logged output parsed in the tool format of the family of the run
that answered) and scored by the registry's own metrics against a reference that names only the offered tools
(`tool_metrics.offered_turn`), so only the metrics that need no expected call apply:

- tool_call_valid: among replies that call (or try to), the share whose calls parse, with JSON-object arguments;
- tool_arguments_valid: among replies that call (or try to), the share whose calls parse, name an offered function
  and pass its schema;
- tool_calls_unparsable: replies whose call does not parse (the server counts them as tunesmith_tool_calls_unparsable);
- tool_requests: the requests judged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunesmith import families, models
from tunesmith.errors import TunesmithError
from tunesmith.eval import registry, tool_metrics
from tunesmith.records import GateResult
from tunesmith.run import load_run

if TYPE_CHECKING:
    from tunesmith.families import Family
    from tunesmith.serve.store import RequestRow

log = logging.getLogger(__name__)

TOOL_FIGURES = ("tool_requests", "tool_call_valid", "tool_arguments_valid", "tool_calls_unparsable")
"""The per-variant figures of replies to requests that offered tools."""
SCORED = ("tool_call_valid", "tool_arguments_valid")
"""The registry metrics a reply is scored by without a reference."""


@functools.lru_cache(maxsize=32)
def family_at(path: str, is_run: bool) -> Family | None:
    """The chat family of a run folder (as its manifest records it, else its tokenizer's) or of a base model path;
    None when it cannot be read (the request's calls are then not judged)."""
    try:
        if is_run:
            run = load_run(path)
            if run.manifest.family is not None:
                return families.get(run.manifest.family.family)
            path = str(run.adapter_dir)
        return families.for_tokenizer(models.load_tokenizer(path))
    except (TunesmithError, OSError, KeyError, ValueError) as exc:
        log.warning("the tool calls answered by %s are not judged: its chat family cannot be read (%s)", path, exc)
        return None


def reply_turn(row: RequestRow) -> str | None:
    """A logged reply as eval's tool turn, parsed in its family's format; None when the family is unknown or
    documents no tool format."""
    family = family_at(row.run, True) if row.run else family_at(row.base_model, False) if row.base_model else None
    if family is None or family.tools is None or row.output is None:
        return None
    return tool_metrics.completion_turn(row.output, family.tools, False, family.think)


def figures(rows: Sequence[RequestRow]) -> dict[str, float | None]:
    """TOOL_FIGURES of the answered, content-logged rows that offered tools ({} when none did)."""
    judged = [(r, turn) for r in rows if r.answered and r.tools and (turn := reply_turn(r)) is not None]
    if not judged:
        return {}
    values: dict[str, list[float]] = {name: [] for name in SCORED}
    unparsable = 0
    for row, turn in judged:
        reference = tool_metrics.offered_turn(row.tools or [])
        for name in SCORED:
            fn = registry.METRICS[name].fn
            assert fn is not None
            if (value := fn(turn, reference)) is not None:
                values[name].append(float(value))
        parsed = tool_metrics.parse_turn(turn)
        unparsable += parsed is not None and parsed.error is not None
    out: dict[str, float | None] = {"tool_requests": float(len(judged)), "tool_calls_unparsable": float(unparsable)}
    out.update({name: sum(v) / len(v) if v else None for name, v in values.items()})
    return out


def unjudged(gate: Any, seen: dict[str, dict[str, float]], candidate: str) -> Any:
    """A live tool gate (live_tool_*) with nothing to compare, skipped instead of failed: no request offered tools,
    or one side's replies never called a function (a share of valid calls needs calls). Any other gate as it is."""
    if gate.status != "fail" or gate.value is not None or not gate.name.startswith("live_tool_"):
        return gate
    figure = gate.name.removeprefix("live_").removesuffix("_drop")
    missing = [side for side in ("primary", candidate) if figure not in seen.get(side, {})]
    if not missing:
        return gate
    offered = any(seen.get(side, {}).get("tool_requests") for side in ("primary", candidate))
    why = f"no reply of the {' or the '.join(missing)} called a function" if offered else "no request offered tools"
    return GateResult(
        name=gate.name, rule=gate.rule, threshold=gate.threshold, status="skip", detail=f"{why}: nothing to compare"
    )
