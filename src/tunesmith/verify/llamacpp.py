"""verify's llama.cpp path: the exported GGUF in llama.cpp itself, when llama-cpp-python (the optional `llamacpp`
extra, never a default dependency) is installed.

The prompt is rendered by llama-cpp-python's own Jinja chat formatter from the template embedded in the file (what
its chat completion uses), the stop tokens are llama.cpp's end-of-generation set as it loaded it from the file, and
the greedy tokens come from llama.cpp's own sampler, on the reference prompt's tokens.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunesmith.verify.compare import Divergence, Report, compare_ids, compare_prompts, compare_stops


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class _Tokenizer:
    """llama.cpp's tokenizer behind the two calls verify's comparisons make (special tokens parsed and shown)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))}

    def decode(self, ids: list[int]) -> str:
        return bytes(self.llm.detokenize(ids, special=True)).decode("utf-8", errors="replace")


def check(report: Report, ref: Any, gguf_file: Path, max_new_tokens: int, exact: bool = True) -> None:
    """Add the llama.cpp path to `report` (skipped, with the reason, when llama-cpp-python is not installed)."""
    if not available():
        report.skip("llama.cpp", "llama-cpp-python is not installed (the optional extra: pip install 'tunesmith[llamacpp]')")
        return
    report.add("llama.cpp", llamacpp_path(ref, gguf_file, max_new_tokens, exact), "llama.cpp, the template in the file")


def _greedy(llm: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """llama.cpp's greedy tokens after `prompt_ids`, its end-of-generation token included."""
    out: list[int] = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if llm._model.token_is_eog(token) or len(out) >= max_new_tokens:
            break
    return out


def llamacpp_path(ref: Any, gguf_file: Path, max_new_tokens: int, exact: bool = True) -> list[Divergence]:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    longest = max((len(p) for p in ref.prompt_ids), default=0)
    llm = Llama(model_path=str(gguf_file), n_ctx=max(512, longest + max_new_tokens + 8), verbose=False, seed=0)
    tok = _Tokenizer(llm)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return [Divergence("llama.cpp", "template", None, None, "the chat template embedded in the file", "none")]
    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(eos),
        bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
        stop_token_ids=[eos],
    )
    found = compare_prompts("llama.cpp", ref, [formatter(messages=c).prompt for c in ref.convs], tok)
    found += compare_stops(
        "llama.cpp", ref.end_of_turn[:1], [t for t in ref.end_of_turn if llm._model.token_is_eog(t)], ref.tokenizer
    )
    for k, (ids, want) in enumerate(zip(ref.prompt_ids, ref.tokens), start=1):
        got = _greedy(llm, tok(ref.prompts[k - 1])["input_ids"] or ids, max_new_tokens)
        found += compare_ids("llama.cpp", "tokens", k, want, got, ref.tokenizer, exact)
    return found
