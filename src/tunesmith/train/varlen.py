"""Padding-free attention that attends within each packed row only, row by row: `speed.attention: varlen`.

A padding-free batch is one long sequence of concatenated rows, kept apart by `position_ids` restarting at 0.
Under `sdpa`, transformers isolates the rows with a block-diagonal mask over the whole sequence, and the CPU
kernel then computes every query against every key of the batch before masking: with 4 rows of similar length
that is 4x the attention work of the rows alone (attention was a third of a SmolLM2 step on the benchmark CPU,
docs/benchmarks.md). Flash-attention's varlen kernels avoid this on GPUs; this is the same idea through the
public attention registry of transformers (AttentionInterface): split the sequence where position_ids restart
and run causal sdpa on each row. The result is the masked result (tests/unit/test_speed.py: loss and gradients).

A sequence compacted by train/compact.py (speed.shared_prefix) carries its segments explicitly: a row that continues
the first tokens of an earlier row attends to that row's keys for them, then causally to its own.

Only training and loss evaluation use it (`use`/`restore` around them in train.sft). Registered without a mask
function, transformers hands it no mask: anything other than one packed sequence without a cache (a padded
batch, a decoding step) is refused rather than attended wrongly.
"""

from __future__ import annotations

from typing import Any

NAME = "tunesmith_varlen_sdpa"
SEGMENTS = "tunesmith_segments"  # keyword train/compact.py has the backbone forward to every attention call


def attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0, scaling: Any = None, **kwargs: Any
) -> tuple[Any, None]:
    """transformers' attention-function signature; query/key/value are (batch, heads, seq, head_dim).

    The rows are found where position_ids restart at 0, or, for a sequence compacted by train/compact.py, given as
    segments (start, end, anchor start, anchor length): a segment that continues the first `anchor length` tokens
    of its anchor attends to those keys and then causally to its own.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    segments = kwargs.pop(SEGMENTS, None)
    kwargs.pop("is_causal", None)
    if attention_mask is not None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or position_ids is None:
        raise ValueError(
            f"{NAME} attends one packed sequence without a cache or mask (padding-free training); "
            f"got batch {query.shape[0]}, query length {query.shape[2]}, key length {key.shape[2]}, "
            f"mask {'given' if attention_mask is not None else 'none'}, position_ids {'none' if position_ids is None else 'given'}"
        )
    if segments is None:
        starts = torch.nonzero(position_ids.reshape(-1) == 0).flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        bounds = [*starts, query.shape[2]]
        segments = [(s, e, 0, 0) for s, e in zip(bounds, bounds[1:]) if e > s]
    outs = []
    for s, e, anchor, shared in segments:
        k, v, mask = key[:, :, s:e], value[:, :, s:e], None
        if shared:
            k = torch.cat([key[:, :, anchor : anchor + shared], k], dim=2)
            v = torch.cat([value[:, :, anchor : anchor + shared], v], dim=2)
            # query i (position shared + i) sees the anchor's tokens and its own first i + 1
            mask = torch.ones(e - s, shared + e - s, dtype=torch.bool, device=query.device).tril(shared)[None, None]
        outs.append(
            sdpa_attention_forward(
                module, query[:, :, s:e], k, v, mask, dropout=dropout, scaling=scaling, is_causal=mask is None, **kwargs
            )[0]
        )
    return torch.cat(outs, dim=1), None  # (batch, seq, heads, head_dim), as sdpa_attention_forward returns


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention)


def supports(model: Any) -> bool:
    """Whether the model's attention may run as sdpa: not Gemma 2's, whose soft-capped attention logits sdpa cannot
    compute (its packed rows are kept apart by transformers' per-row mask instead)."""
    return bool(getattr(model, "_supports_sdpa", False))


def use(model: Any) -> str:
    """Switch the model's attention to the per-row kernel; returns the implementation to restore afterwards."""
    register()
    previous: str = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    return previous


def restore(model: Any, previous: str) -> None:
    model.set_attn_implementation(previous)
