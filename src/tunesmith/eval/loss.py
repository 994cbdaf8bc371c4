"""Per-token loss of the reference answers, as trained (the same mask), and perplexity: eval's and checkpoint
selection's likelihood figures."""

from __future__ import annotations

import math
from typing import Any

from tunesmith.data.template import IGNORE, tokenize_example
from tunesmith.eval.generate import MIN_SHARED_PREFIX, cache_argument, prefix_kv_cache, shares_prefix
from tunesmith.train.compact import common_prefix


def reference_loss(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], max_length: int, reasoning: str = "train"
) -> float:
    """Mean per-token cross-entropy (nats) of the reference assistant turns, as trained (same mask; `reasoning`:
    the run's data.reasoning).

    Rows run one at a time. Leading tokens that every row shares and that no loss term depends on (a system
    prompt) run once; each row then continues from a copy of that KV cache, with the same positions and the
    same terms as running it whole.
    """
    import copy

    import torch

    rows = (tokenize_example(tokenizer, m, max_length, "truncate", reasoning=reasoning) for m in conversations)
    toks = [t for t in rows if t.n_trained]
    # Shared tokens whose labels are all masked, the first row-own token's label included (the prefix's last
    # position predicts it).
    shared = common_prefix([t.input_ids for t in toks], own=1) if shares_prefix(model, None) else 0
    while shared and any(label != IGNORE for t in toks for label in t.labels[: shared + 1]):
        shared -= 1
    prefix_cache: Any = None
    if shared >= MIN_SHARED_PREFIX:
        with torch.inference_mode():
            prefix_cache = prefix_kv_cache(model, toks[0].input_ids[:shared])
    if prefix_cache is None:
        shared = 0
    name = cache_argument(model)
    total, count = 0.0, 0
    for tok in toks:
        ids = torch.tensor([tok.input_ids[shared:]], device=model.device)
        labels = torch.tensor([tok.labels[shared:]], device=model.device)
        extra = {name: copy.deepcopy(prefix_cache)} if prefix_cache is not None else {}
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels, **extra).loss
        n = int((labels[:, 1:] != IGNORE).sum())
        total += float(loss) * n
        count += n
    return total / max(count, 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
