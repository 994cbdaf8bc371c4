"""THE one place retrieved passages enter a conversation: training, eval, the ladder and serving all call `with_context`.

An adapter trained on prompts built here sees context exactly as it will see it at eval and serve time,
so it learns to read the context rather than memorise the facts in it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.rag.retrieve import Mode, Passage, Retriever

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example

CONTEXT_HEADER = "Context:"


def format_passages(passages: list[Passage]) -> str:
    """`[1] (source:line) text` lines, numbered from 1 in rank order."""
    return "\n".join(f"[{i}] ({p.source}:{p.line}) {p.text}" for i, p in enumerate(passages, start=1))


def retrieval_query(messages: list[dict[str, Any]]) -> str:
    """The text retrieval searches for: the content of the last user turn ("" when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


@functools.lru_cache(maxsize=16)
def _jinja(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment  # a recipe's template may not reach Python internals

    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(template)


def render_template(template: str, context: str, question: str) -> str:
    """Fill `{context}`/`{question}` (str.format), or `{{ context }}`/`{{ question }}` (Jinja2: a template with `{{`/`{%`)."""
    if "{{" in template or "{%" in template:
        return str(_jinja(template).render(context=context, question=question))
    return template.format(context=context, question=question)


def with_context(messages: list[dict[str, Any]], passages: list[Passage], template: str | None = None) -> list[dict[str, Any]]:
    """A copy of `messages` with `passages` in it; the input is never modified.

    Default: "Context:\\n[1] (source:line) text ..." appended to the system message (a new system message
    first when there is none); no passages = the messages unchanged. With `template`, the last user turn
    becomes the rendered template (placeholders `context` and `question` = that turn's text).
    """
    out = copy.deepcopy(messages)
    if template is not None:
        for message in reversed(out):
            if message.get("role") == "user":
                message["content"] = render_template(template, format_passages(passages), retrieval_query(out))
                break
        return out
    if not passages:
        return out
    block = f"{CONTEXT_HEADER}\n{format_passages(passages)}"
    if out and out[0].get("role") == "system":
        system = out[0].get("content") or ""
        out[0]["content"] = f"{system}\n\n{block}" if system else block
    else:
        out.insert(0, {"role": "system", "content": block})
    return out


def augment(
    messages: list[dict[str, Any]], retriever: Retriever, k: int = 4, template: str | None = None, mode: Mode = "hybrid"
) -> tuple[list[dict[str, Any]], list[Passage]]:
    """Retrieve for the last user turn and put the passages into the conversation: (messages, passages)."""
    passages = retriever.search(retrieval_query(messages), k=k, mode=mode)
    return with_context(messages, passages, template), passages


def recipe_retriever(recipe: Recipe) -> Retriever | None:
    """The recipe's retriever (`rag.index`), or None when the recipe has no `rag` section."""
    if recipe.rag is None:
        return None
    return Retriever.open(Path(recipe.rag.index), recipe.rag.embedder)


def augment_many(
    conversations: list[list[dict[str, Any]]],
    retriever: Retriever,
    k: int = 4,
    template: str | None = None,
    mode: Mode = "hybrid",
) -> list[list[dict[str, Any]]]:
    """`augment` for many conversations (queries embedded in one batch); the same messages `augment` returns for each."""
    hits = retriever.search_many([retrieval_query(m) for m in conversations], k=k, mode=mode)
    return [with_context(m, passages, template) for m, passages in zip(conversations, hits, strict=True)]


def augment_examples(examples: list[Example], recipe: Recipe) -> list[Example]:
    """Each example with retrieved context in its prompt (recipe.rag); the examples unchanged without rag.

    The query is the last user turn, so a training example's answer never leaks into its own retrieval.
    """
    retriever = recipe_retriever(recipe)
    if retriever is None or recipe.rag is None:
        return examples
    rag = recipe.rag
    augmented = augment_many([ex.messages for ex in examples], retriever, rag.k, rag.template, rag.mode)
    return [replace(ex, messages=messages) for ex, messages in zip(examples, augmented, strict=True)]


def augment_rows(rows: list[dict[str, Any]], recipe: Recipe) -> list[dict[str, Any]]:
    """Rows with a `prompt` message list (DPO pairs, GRPO/distill prompts) with retrieved context in the prompt."""
    retriever = recipe_retriever(recipe)
    if retriever is None or recipe.rag is None:
        return rows
    rag = recipe.rag
    augmented = augment_many([row["prompt"] for row in rows], retriever, rag.k, rag.template, rag.mode)
    return [{**row, "prompt": prompt} for row, prompt in zip(rows, augmented, strict=True)]
