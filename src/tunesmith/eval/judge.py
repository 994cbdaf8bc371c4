"""LLM judge: a local model (run folder or model spec, through tunesmith.loader) or an OpenAI-compatible endpoint.

Pairwise: each example is judged twice, base shown first then tuned first, so a judge that prefers a position
cancels out; an example counts as a win or loss only when both orders agree (else a tie), and the share of
examples where the orders agree is reported. Claims: the judge lists an answer's claims and labels each
supported or not by the truth and the input (free-text hallucination).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tunesmith.errors import ModelError
from tunesmith.eval import metrics
from tunesmith.eval.generate import generate
from tunesmith.loader import load_target

if TYPE_CHECKING:
    from tunesmith.config import JudgeSection

Conversation = list[dict[str, str]]

PAIRWISE_PROMPT = """You compare two answers to the same request. A reference answer shows what is expected.

Request:
{prompt}

Reference answer:
{reference}

Answer A:
{a}

Answer B:
{b}

Which answer is better (correct, faithful to the reference, following the request's format)? Reply with exactly one
of: A, B, tie."""

CLAIMS_PROMPT = """List every factual claim the ANSWER makes and say whether the TRUTH or the INPUT supports it.

INPUT:
{source}

TRUTH:
{truth}

ANSWER:
{answer}

Reply with JSON only: {{"claims": [{{"claim": "...", "supported": true}}]}}"""

# Capital A / B only: a lower-case "a" is an article. The prompt asks for exactly one word.
_VERDICT = re.compile(r"\b((?i:tie)|A|B)\b")


class Judge(Protocol):
    """Anything that answers a batch of conversations (greedy); tests pass a fake."""

    def complete(self, conversations: list[Conversation]) -> list[str]: ...


class LocalJudge:
    """A run folder or model spec loaded through tunesmith.loader; answers with the one generation function."""

    def __init__(self, spec: str, max_new_tokens: int = 256, batch_size: int = 8):
        self.loaded = load_target(spec)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def complete(self, conversations: list[Conversation]) -> list[str]:

        return generate(self.loaded.model, self.loaded.tokenizer, conversations, self.max_new_tokens, self.batch_size)


class EndpointJudge:
    """An OpenAI-compatible chat completions endpoint (the `openai` client), temperature 0."""

    def __init__(self, url: str, model: str = "default", api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 256):
        import openai

        self.client = openai.OpenAI(base_url=url, api_key=os.environ.get(api_key_env) or "unused", max_retries=2)
        self.url, self.model, self.max_new_tokens = url, model, max_new_tokens

    def complete(self, conversations: list[Conversation]) -> list[str]:
        import openai

        out = []
        for conv in conversations:
            try:
                resp = self.client.chat.completions.create(
                    model=self.model,
                    messages=conv,  # type: ignore[arg-type]  # plain role/content dicts are what the API accepts
                    temperature=0,
                    max_tokens=self.max_new_tokens,
                )
            except openai.OpenAIError as exc:
                raise ModelError(
                    f"judge endpoint {self.url} failed: {exc}",
                    hint="Check the URL (it ends in /v1), eval.judge.endpoint_model and the API key.",
                ) from None
            out.append(resp.choices[0].message.content or "")
        return out


def open_judge(
    spec: str, endpoint_model: str = "default", api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 256
) -> Judge:
    """An endpoint judge for an http(s) URL, else a local one (run folder or model spec)."""
    if spec.startswith(("http://", "https://")):
        return EndpointJudge(spec, endpoint_model, api_key_env, max_new_tokens)
    return LocalJudge(spec, max_new_tokens)


def open_section(section: JudgeSection) -> Judge:
    """The judge an eval.judge section names."""
    return open_judge(section.model, section.endpoint_model, section.api_key_env, section.max_new_tokens)


def judges_for_graders(section: JudgeSection | None, judge: Judge | None = None) -> Callable[[str], Judge]:
    """The judge a score_model / label_model grader asks, by its `model`: a URL or local spec of its own when there is
    no eval.judge (or it is a URL), else the eval.judge endpoint asked for that model name, else the eval.judge itself.
    Each is opened once, on first use (`judge`: the eval.judge already open)."""
    cache: dict[str, Judge] = {}

    def get(name: str) -> Judge:
        if name not in cache:
            if section is not None and name == section.model:  # the grader names eval.judge itself
                cache[name] = judge if judge is not None else cache.setdefault("", open_section(section))
            elif name.startswith(("http://", "https://")) or section is None:
                cache[name] = open_judge(name)
            else:
                shared = judge if judge is not None else cache.setdefault("", open_section(section))
                if isinstance(shared, EndpointJudge):
                    cache[name] = EndpointJudge(section.model, name, section.api_key_env, section.max_new_tokens)
                else:
                    cache[name] = shared
        return cache[name]

    return get


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply (the first such word), None when it gave none."""
    m = _VERDICT.search(text)
    if m is None:
        return None
    word = m.group(1)
    return "tie" if word.lower() == "tie" else word.upper()


def _ask(prompt: str, reference: str, a: str, b: str) -> Conversation:
    return [{"role": "user", "content": PAIRWISE_PROMPT.format(prompt=prompt, reference=reference, a=a, b=b)}]


def _tally(outcomes: list[str]) -> dict[str, Any]:
    n = len(outcomes)
    wins, losses = outcomes.count("win"), outcomes.count("loss")
    return {"wins": wins, "losses": losses, "ties": n - wins - losses, "win_rate": wins / n if n else 0.0}


def pairwise(judge: Judge, prompts: list[str], refs: list[str], base: list[str], tuned: list[str]) -> dict[str, Any]:
    """Tuned vs base judged in both orders. win_rate = wins / examples (ties and disagreements count against);
    agreement = share of examples whose two verdicts agree; per order, its own tally (the position bias shows there)."""
    n = len(prompts)
    replies = judge.complete(
        [_ask(p, r, b, t) for p, r, b, t in zip(prompts, refs, base, tuned, strict=True)]
        + [_ask(p, r, t, b) for p, r, b, t in zip(prompts, refs, base, tuned, strict=True)]
    )
    tuned_second = [{"B": "win", "A": "loss", "tie": "tie"}.get(parse_verdict(x) or "", "none") for x in replies[:n]]
    tuned_first = [{"A": "win", "B": "loss", "tie": "tie"}.get(parse_verdict(x) or "", "none") for x in replies[n:]]
    agreed = [x == y and x != "none" for x, y in zip(tuned_second, tuned_first)]
    final = [x if ok else "tie" for x, ok in zip(tuned_second, agreed)]
    return {
        **_tally(final),
        "agreement": sum(agreed) / n if n else 0.0,
        "n": n,
        "unparsed": (tuned_second + tuned_first).count("none"),
        "orders": {"base_first": _tally(tuned_second), "tuned_first": _tally(tuned_first)},
    }


def unsupported_claims(judge: Judge, answers: list[str], truths: list[str], sources: list[str]) -> list[tuple[int, int] | None]:
    """(claims, unsupported) per answer as the judge labels them; None when its reply holds no claims list."""
    replies = judge.complete(
        [
            [{"role": "user", "content": CLAIMS_PROMPT.format(source=s, truth=t, answer=a)}]
            for a, t, s in zip(answers, truths, sources, strict=True)
        ]
    )
    out: list[tuple[int, int] | None] = []
    for reply in replies:
        obj = metrics.first_json_object(reply)
        claims = obj.get("claims") if obj else None
        if not isinstance(claims, list) or not all(isinstance(c, dict) for c in claims):
            out.append(None)
            continue
        out.append((len(claims), sum(1 for c in claims if c.get("supported") is not True)))
    return out
