"""The deploy check: does the live server answer the run's golden prompts as eval recorded for the tuned model?

Inference stacks can serve an adapter that silently has no effect (LoRA target modules that do not
match, a different chat template, zeroed or wrong weights). The check sends each adapter's recorded
eval prompts (eval/predictions.jsonl, else Manifest.golden) through the running server, greedy, and
compares: answers must equal eval's tuned answers, and where eval saw base and tuned differ, the
served answer must not be the base's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.template import prompt_messages
from tunesmith.errors import TunesmithError
from tunesmith.eval.budget import run_budget
from tunesmith.run import load_run
from tunesmith.train.methods import held_out_examples

# Batched (left-padded) eval and one-at-a-time serving can flip a near-tied greedy token; a small
# share of mismatches is numerics, a broken adapter misses most prompts.
MIN_MATCH = 0.9


@dataclass
class Golden:
    conversation: list[dict[str, str]]
    base: str
    tuned: str


@dataclass
class AdapterCheck:
    """One adapter's verdict: how many served answers equal eval's tuned answers, how many fell back to the base's."""

    name: str
    passed: bool
    n: int = 0
    matched: int = 0
    differing: int = 0  # prompts where eval's base and tuned answers differ
    base_like: int = 0  # of those, served answers equal to the base's
    reason: str = ""
    examples: list[dict[str, str]] = field(default_factory=list)


@dataclass
class CheckReport:
    adapters: list[AdapterCheck]

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.adapters)

    def summary(self) -> str:
        return "; ".join(f"{a.name}: {'ok' if a.passed else 'FAILED'} ({a.reason})" for a in self.adapters) or "no adapters"

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "adapters": [asdict(a) for a in self.adapters]}


def golden_prompts(run: Any) -> list[Golden]:
    """The run's recorded prompts with eval's base and tuned answers (full conversations where the data is still there)."""
    path = run.dir / "eval" / "predictions.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        convs = _conversations(run)
        return [Golden(convs.get(r.get("id"), [{"role": "user", "content": r["prompt"]}]), r["base"], r["tuned"]) for r in rows]
    return [
        Golden(g["messages"] if "messages" in g else [{"role": "user", "content": g["prompt"]}], g.get("base", ""), g["tuned"])
        for g in run.manifest.golden
        if "tuned" in g
    ]


def _conversations(run: Any) -> dict[str, list[dict[str, str]]]:
    """Eval example id -> the prompt messages eval sent (system turn included); empty when the data moved."""
    try:  # the run's own held-out rows: the prompts its eval (and so its golden answers) used
        return {e.id: prompt_messages(e.messages) for e in held_out_examples(run)}
    except (TunesmithError, OSError, ValueError):
        return {}


def _ask(client: Any, name: str, conversation: list[dict[str, str]], max_tokens: int) -> str:
    res = client.post(
        "/v1/chat/completions",
        json={"model": name, "messages": conversation, "temperature": 0, "max_tokens": max_tokens, "stream": False},
    )
    if res.status_code != 200:
        raise RuntimeError(f"HTTP {res.status_code}: {res.text[:200]}")
    return str(res.json()["choices"][0]["message"]["content"]).strip()


def check_adapter(client: Any, served: Any, min_match: float = MIN_MATCH) -> AdapterCheck:
    """Send one adapter's golden prompts through the server and judge the answers."""
    out = AdapterCheck(served.name, False)
    if served.template_warning:
        out.reason = served.template_warning
        return out
    run = load_run(Path(served.run))
    golden = golden_prompts(run)
    if not golden:
        out.reason = f"no golden prompts recorded in {run.dir} (run `tunesmith eval {run.dir}` first)"
        return out
    budget = run_budget(run)  # the max_new_tokens eval generated with
    for g in golden:
        try:
            answer = _ask(client, served.name, g.conversation, budget)
        except RuntimeError as exc:
            out.reason = f"the server failed a golden prompt: {exc}"
            return out
        out.n += 1
        hit = answer == g.tuned.strip()
        out.matched += hit
        if g.base.strip() != g.tuned.strip():
            out.differing += 1
            out.base_like += answer == g.base.strip()
        if not hit and len(out.examples) < 3:
            out.examples.append({"prompt": g.conversation[-1]["content"], "served": answer, "eval_tuned": g.tuned})
    rate = out.matched / out.n
    out.passed = rate >= min_match and out.base_like <= (1 - min_match) * max(out.differing, 1)
    out.reason = (
        f"{out.matched}/{out.n} answers equal eval's tuned answers; {out.base_like} of the {out.differing} "
        "prompts where eval saw the adapter change the answer came back as the base's"
    )
    if not out.passed:
        out.reason += (
            " - the served adapter does not behave as the evaluated one (wrong or zeroed weights, "
            "LoRA modules that did not attach, or a different chat template)"
        )
    return out


def deploy_check(
    url: str, api_key: str, served: list[Any], min_match: float = MIN_MATCH, timeout_s: float = 300.0
) -> CheckReport:
    """Check every served adapter that came from a run; base models and bare adapters are not checked."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout_s) as client:
        return CheckReport([check_adapter(client, s, min_match) for s in served if s.peft_name and s.run])
