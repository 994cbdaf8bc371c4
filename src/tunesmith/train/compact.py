"""Rows that begin with the same tokens run those tokens once, and no padding is run: `speed.shared_prefix`.

The rows of one training pass often start alike: every SFT demonstration opens with the task's system prompt and the
chat template's header (74 tokens of the demo's ~240), DPO's chosen and rejected answers follow the same prompt, and
GRPO scores num_generations completions of one prompt. Causal attention makes a token's hidden state a function of
the tokens before it only, so those shared tokens have the same hidden states, keys and values in every row.

`install(model)` wraps the backbone's forward (transformers' `base_model`, e.g. LlamaModel): a training-shaped call
(packed rows split by position_ids, or a padded batch with a 2-D attention mask) is rewritten as one sequence holding
each row's tokens once: a row that begins with at least MIN_SHARED tokens of an earlier row (its anchor) contributes
only its own tail, positioned where it continues the anchor, and attends to the anchor's first tokens plus itself
(train/varlen.py runs each such segment). The backbone's last hidden states are then gathered back into the
caller's layout (a shared position copied into every row that has it, padding as zeros), so the LM head, the loss and
the trainer see exactly what the plain forward returns; the backward of that gather adds up every row's gradient at
a shared position, so the prefix's computation receives the sum, as when each row ran it. Loss and gradients equal
the plain path's (tests/unit/test_speed.py). A call with a KV cache (generation), embeddings or per-layer outputs
asked for, or nothing to save, runs the backbone unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.train import varlen

MIN_SHARED = 16  # tokens: a shorter shared beginning saves less than its segment's own attention call costs

Segment = tuple[int, int, int, int]  # (start, end) in the compact sequence; (start, length) of the anchor tokens it continues


@dataclass(frozen=True)
class Layout:
    """How a batch runs compacted: the one sequence, where each row's positions are found in it, and what was saved."""

    ids: Any  # (1, T) token ids
    positions: Any  # (1, T) each token's position in its own row
    segments: list[Segment]
    gather: Any  # (B*L,) index of every original position in the compact hidden states; T = a zero row (padding)
    shape: tuple[int, int]  # the caller's (B, L)
    saved: int  # positions of the caller's layout not run: padding and shared tokens


def _rows(input_ids: Any, attention_mask: Any, position_ids: Any) -> list[tuple[int, int, int]] | None:
    """(batch row, start, end) of each real row: a padded batch's masked spans, a packed row's pieces (position_ids
    restarting at 0), or whole rows; None for a shape this does not handle (a mask with holes, a 4-D mask)."""
    b, length = input_ids.shape
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            return None
        rows = []
        for i, mask in enumerate(attention_mask.tolist()):
            ones = [j for j, v in enumerate(mask) if v]
            if not ones or ones[-1] + 1 - ones[0] != len(ones):
                return None  # an empty row, or padding inside a row: not one contiguous row
            rows.append((i, ones[0], ones[-1] + 1))
        return rows
    if position_ids is not None and b == 1:
        pos = position_ids.reshape(-1).tolist()
        if len(pos) != length or not pos or pos[0] != 0:
            return None
        starts = [j for j, p in enumerate(pos) if p == 0]
        return [(0, s, e) for s, e in zip(starts, [*starts[1:], length])]
    return [(i, 0, length) for i in range(b)]


def _common(a: list[int], b: list[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def layout(input_ids: Any, attention_mask: Any = None, position_ids: Any = None, min_shared: int = MIN_SHARED) -> Layout | None:
    """The compact form of a batch, or None when its shape is not handled. Each row shares with the earlier anchor it
    has the longest common beginning with, when that is at least `min_shared` tokens; otherwise it is an anchor."""
    import torch

    rows = _rows(input_ids, attention_mask, position_ids)
    if rows is None:
        return None
    flat = input_ids.tolist()
    tokens = [flat[b][s:e] for b, s, e in rows]
    anchors: list[int] = []
    follows: dict[int, list[tuple[int, int]]] = {}  # anchor -> (row, shared tokens), in row order
    for r, row in enumerate(tokens):
        best, shared = -1, 0
        for a in anchors:
            n = _common(tokens[a], row)
            if n > shared:
                best, shared = a, n
        if shared >= min_shared:
            follows[best].append((r, shared))
        else:
            anchors.append(r)
            follows[r] = []
    ids: list[int] = []
    positions: list[int] = []
    segments: list[Segment] = []
    where: dict[int, list[int]] = {}  # row -> compact index of each of its tokens
    for a in anchors:
        start = len(ids)
        ids += tokens[a]
        positions += range(len(tokens[a]))
        segments.append((start, len(ids), 0, 0))
        where[a] = list(range(start, len(ids)))
        for r, shared in follows[a]:
            own = len(ids)
            ids += tokens[r][shared:]
            positions += range(shared, len(tokens[r]))
            if len(ids) > own:  # a row that is all prefix of its anchor runs nothing of its own
                segments.append((own, len(ids), start, shared))
            where[r] = where[a][:shared] + list(range(own, len(ids)))
    b, length = input_ids.shape
    gather = [len(ids)] * (b * length)
    for r, (row, s, _) in enumerate(rows):
        for j, index in enumerate(where[r]):
            gather[row * length + s + j] = index
    device = input_ids.device
    return Layout(
        ids=torch.tensor([ids], device=device),
        positions=torch.tensor([positions], device=device),
        segments=segments,
        gather=torch.tensor(gather, device=device),
        shape=(b, length),
        saved=b * length - len(ids),
    )


def install(model: Any) -> Callable[[], None]:
    """Wrap `model`'s backbone (a transformers causal LM, before peft wraps it); returns the function that unwraps it."""
    import torch

    backbone = model.base_model
    original = backbone.forward

    def forward(
        input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None, inputs_embeds: Any = None, **kwargs: Any
    ) -> Any:
        plain = (
            input_ids is None
            or inputs_embeds is not None
            or kwargs.get("cache") is not None
            or kwargs.get("past_key_values") is not None
            or kwargs.get("output_attentions")
            or kwargs.get("output_hidden_states")
        )
        lay = None if plain else layout(input_ids, attention_mask, position_ids)
        if lay is None or lay.saved == 0:
            return original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
        kwargs.update(use_cache=False, cache=None)
        kwargs.pop("past_key_values", None)
        kwargs[varlen.SEGMENTS] = lay.segments
        previous = varlen.use(backbone)
        try:
            out = original(input_ids=lay.ids, position_ids=lay.positions, **kwargs)
        finally:
            varlen.restore(backbone, previous)
        hidden = out.last_hidden_state[0]
        # padding positions gather the zero row appended at index T; the backward of index_select sums the gradient
        # of every position gathered from one compact token (a shared prefix token: once per row that has it)
        padded = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[-1])])
        out.last_hidden_state = padded.index_select(0, lay.gather).view(*lay.shape, hidden.shape[-1])
        return out

    backbone.forward = forward
    return lambda: backbone.__dict__.pop("forward", None)


def pass_tokens(lengths: list[int], shared: int, rows: int) -> float:
    """Expected tokens one pass of `rows` rows runs, rows of these lengths whose first `shared` tokens are common."""
    mean = sum(lengths) / max(len(lengths), 1)
    return rows * mean - (rows - 1) * min(shared, mean)


def common_prefix(rows: list[list[int]], own: int = 0) -> int:
    """How many leading tokens every row has in common, leaving each row at least `own` tokens of its own (generation
    and scoring continue each row from its own last token: own=1). 0 for fewer than two rows: one row has nothing
    to share with."""
    if len(rows) < 2:
        return 0
    n = max(min(len(r) for r in rows) - own, 0)
    for r in rows[1:]:
        n = _common(rows[0][:n], r)
    return n
