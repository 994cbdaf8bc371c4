"""One completion streamed as text deltas: the one generation function's settings (prompt, stops, decoding) with
transformers' TextIteratorStreamer, generation in a background thread (serve's streamed requests, the studio's chat)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from tunesmith.eval.generate import FinishReason, _cut_at_stop, _generation_config, _seeded, family_of, opens_trace, prompt_text


class TextStream:
    """Iterator of text deltas from a generation running in a background thread.

    `cancel()` (or setting `cancel_event`) stops generation at the next token. After the iterator is
    exhausted, `prompt_tokens`, `completion_tokens` and `finish_reason` describe the generation.
    """

    def __init__(self, stop: list[str] | None) -> None:
        self.cancel_event = threading.Event()
        self.opened = False  # the prompt opened a trace: the deltas start inside it (data.reasoning.TraceStream)
        self.think: tuple[str, str] = ("<think>", "</think>")
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        self._stop = [s for s in stop or [] if s]
        self._last_token: int | None = None
        self._deltas: Iterator[str] = iter(())
        self._thread: threading.Thread | None = None

    def cancel(self) -> None:
        self.cancel_event.set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that could still grow into a stop string."""
        return max((k for s in self._stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _run(self, streamer: Any, stops: set[int]) -> Iterator[str]:
        """Yield deltas, holding back a possible stop-string prefix; cut and cancel when one appears."""
        text, sent, cut = "", 0, False
        for piece in streamer:
            text += piece
            found, hit = _cut_at_stop(text, self._stop)
            if hit:
                text, cut = found, True
                self.cancel_event.set()
                break
            safe = len(text) - self._held_back(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        if len(text) > sent:  # the held-back tail did not become a stop string, or precedes one
            yield text[sent:]
        if cut or (self._last_token is not None and self._last_token in stops):
            self.finish_reason = "stop"
        elif self.cancel_event.is_set():
            self.finish_reason = "cancelled"
        else:
            self.finish_reason = "length"


def generate_stream(
    model: Any,
    tokenizer: Any,
    conversation: list[dict[str, Any]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float | None = 600.0,
    thinking: bool | None = None,
) -> TextStream:
    """Stream one completion as text deltas (transformers' TextIteratorStreamer, generation in a thread).

    Pass `cancel` (or call the returned stream's `cancel()`) to abort, e.g. when a client disconnects.
    `timeout_s` bounds the wait for each next piece of text. thinking: as for generate_detailed.
    """
    import torch
    from transformers import (
        StoppingCriteria,
        StoppingCriteriaList,
        TextIteratorStreamer,
    )

    stream = TextStream(stop)
    if cancel is not None:
        stream.cancel_event = cancel
    config = _generation_config(model, tokenizer, max_new_tokens, temperature, top_p)
    family = family_of(model, tokenizer)
    prompt = prompt_text(model, tokenizer, conversation, thinking)
    stream.opened, stream.think = opens_trace(prompt, family), family.think
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    stream.prompt_tokens = int(enc["input_ids"].shape[1])

    class _Watch(StoppingCriteria):  # counts tokens and honours cancel between two decoding steps
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            stream.completion_tokens = int(input_ids.shape[1]) - stream.prompt_tokens
            stream._last_token = int(input_ids[0, -1])
            return torch.full((input_ids.shape[0],), stream.cancel_event.is_set(), dtype=torch.bool, device=input_ids.device)

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s)

    def work() -> None:
        try:
            with _seeded(seed), torch.inference_mode():
                model.generate(
                    **enc, generation_config=config, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Watch()])
                )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer instead of dying silently in the thread
            stream.error = exc
            streamer.end()  # type: ignore[no-untyped-call]  # untyped upstream

    stream._thread = threading.Thread(target=work, name="tunesmith-generate", daemon=True)
    stream._thread.start()
    stream._deltas = stream._run(streamer, set(config.eos_token_id))
    return stream
