"""What `tunesmith verify` compares, and how a difference is reported: the first differing token, by name.

A path (the adapter in transformers, the merged folder, the served endpoint, the GGUF file, llama.cpp) is compared
with the reference (the training render's prompt, the family's stop tokens, the adapter's greedy tokens) on the
same held-out prompts. Every difference is a `Divergence`; a blocking one makes verify exit 3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.errors import TunesmithError


@dataclass
class Divergence:
    """One difference between a path and the reference."""

    path: str  # adapter | merged | served | gguf | llama.cpp
    what: str  # prompt | stops | tokens | answer | reasoning
    prompt: int | None  # 1-based held-out prompt; None: the whole path (stop tokens)
    position: int | None  # token position of the first difference
    expected: str
    got: str
    blocking: bool = True  # False: reported only (a quantized export)

    def message(self) -> str:
        at = f"prompt {self.prompt}: " if self.prompt else ""
        pos = f" at token {self.position}" if self.position is not None else ""
        return f"{self.path}: {at}{self.what}{pos}: expected {self.expected}, got {self.got}"


@dataclass
class PathCheck:
    """One path's verdict: ok, diverged, reported (differences that do not block), or skipped (and why)."""

    path: str
    status: str
    detail: str = ""


@dataclass
class Report:
    """Everything verify compared, and what differed."""

    run: str
    family: str
    thinking: bool | None
    prompts: int
    max_new_tokens: int
    checks: list[PathCheck] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(d.blocking for d in self.divergences)

    @property
    def first(self) -> Divergence | None:
        return next((d for d in self.divergences if d.blocking), None)

    def add(self, path: str, divergences: list[Divergence], detail: str = "") -> None:
        """Record one path's result from its divergences."""
        self.divergences += divergences
        status = "diverged" if any(d.blocking for d in divergences) else ("reported" if divergences else "ok")
        self.checks.append(PathCheck(path, status, detail))

    def skip(self, path: str, why: str) -> None:
        self.checks.append(PathCheck(path, "skipped", why))

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "passed": self.passed,
            "family": self.family,
            "thinking": self.thinking,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            "checks": [asdict(c) for c in self.checks],
            "divergences": [{**asdict(d), "message": d.message()} for d in self.divergences],
        }


class Divergent(TunesmithError):
    """A path renders, stops or answers differently from training (exit 3)."""

    exit_code = 3

    def __init__(self, report: Report):
        first = report.first
        assert first is not None
        more = sum(d.blocking for d in report.divergences) - 1
        super().__init__(
            f"{report.run}: {first.message()}" + (f" (and {more} more)" if more else ""),
            hint="The served or exported model would not behave as evaluated: fix the template, generation_config "
            "or export named above (tunesmith verify RUN --json lists every difference).",
        )
        self.report = report


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two id lists differ (one ending early counts); None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_at(tokenizer: Any, ids: list[int], i: int) -> str:
    """`'text' (id N)` for ids[i], or `the end` when the list ended before it."""
    if i >= len(ids):
        return "the end (generation stopped)"
    return f"{tokenizer.decode([ids[i]])!r} (id {ids[i]})"


def compare_ids(
    path: str, what: str, k: int, expected: list[int], got: list[int], tokenizer: Any, blocking: bool = True
) -> list[Divergence]:
    """A divergence naming the first differing token of two id lists (none when equal)."""
    at = first_difference(expected, got)
    if at is None:
        return []
    return [Divergence(path, what, k, at, token_at(tokenizer, expected, at), token_at(tokenizer, got, at), blocking)]


def compare_prompts(path: str, ref: Any, prompts: list[str], tokenizer: Any) -> list[Divergence]:
    """Rendered prompts against the training render's, as token ids (each side's own tokenizer), then as bytes."""
    out: list[Divergence] = []
    for k, (want, got) in enumerate(zip(ref.prompts, prompts), start=1):
        if want == got:
            continue
        ids = tokenizer(got, add_special_tokens=False)["input_ids"]
        found = compare_ids(path, "prompt", k, ref.prompt_ids[k - 1], ids, ref.tokenizer)
        if found:
            found[0].got = token_at(tokenizer, ids, found[0].position or 0)
        else:  # the same tokens from different bytes: name the first differing character
            i = first_difference([ord(c) for c in want], [ord(c) for c in got]) or 0
            found = [Divergence(path, "prompt bytes", k, None, repr(want[i : i + 20]), repr(got[i : i + 20]))]
        out += found
    return out


def compare_stops(path: str, required: list[int], stops: list[int], tokenizer: Any) -> list[Divergence]:
    """The family's end-of-turn tokens every path must stop on: one divergence per missing token, named."""
    return [
        Divergence(path, "stops", None, None, f"{tokenizer.decode([t])!r} (id {t}) among the stop tokens", f"{stops}")
        for t in required
        if t not in stops
    ]


def compare_texts(path: str, what: str, k: int, want: str | None, got: str | None, tokenizer: Any) -> list[Divergence]:
    """Two texts (an answer, a trace) compared as the reference tokenizer splits them."""
    if (want or "") == (got or "") and (want is None) == (got is None):
        return []
    a = tokenizer(want or "", add_special_tokens=False)["input_ids"]
    b = tokenizer(got or "", add_special_tokens=False)["input_ids"]
    found = compare_ids(path, what, k, a, b, tokenizer)
    return found or [Divergence(path, what, k, None, repr(want), repr(got))]
