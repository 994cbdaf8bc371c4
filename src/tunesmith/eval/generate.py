"""Batched, greedy, deterministic generation and per-example reference loss."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tunesmith.data.template import IGNORE, render_prompt, tokenize_example


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    max_new_tokens: int,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy completions for each conversation (rendered with the tokenizer's chat template, left-padded)."""
    import torch

    prompts = [render_prompt(tokenizer, conv) for conv in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    outputs: list[str] = []
    try:
        # Similar lengths together waste less padding; results go back in input order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        done: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            for row, i in enumerate(idx):
                done[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            if on_batch:
                on_batch(len(idx))
        outputs = [done[i] for i in range(len(prompts))]
    finally:
        tokenizer.padding_side = side
    return outputs


def reference_loss(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], max_length: int) -> float:
    """Mean per-token cross-entropy (nats) of the reference assistant turns, as trained (same mask)."""
    import torch

    total, count = 0.0, 0
    for messages in conversations:
        tok = tokenize_example(tokenizer, messages, max_length, "truncate")
        if tok.n_trained == 0:
            continue
        ids = torch.tensor([tok.input_ids], device=model.device)
        labels = torch.tensor([tok.labels], device=model.device)
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels).loss
        n = int((labels[:, 1:] != IGNORE).sum())
        total += float(loss) * n
        count += n
    return total / max(count, 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
