"""The one reward-model scorer: a finished `method: reward` run, loaded once per process, scores answers to prompts.

GRPO (`grpo.rewards: [run:PATH]`), eval (`eval.reward_model: PATH`, the metric `reward_model`) and the monitor
(`monitor.reward_model`, mean reward of served answers per window and per rollout variant) all call `RewardModel`, so
a score means the same thing wherever it appears. A score is the head's raw output (a logit, unbounded): only
differences between scores of the same model mean something (P(a preferred to b) = sigmoid(score_a - score_b)).

Each (prompt, answer) is rendered and tokenized by `encode`, the same function the reward method trains on
(data.template.tokenize_example: the conversation as every method renders it), so a served answer is scored exactly
as a training pair was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError

log = logging.getLogger(__name__)

Conversation = list[dict[str, Any]]
_CACHE: dict[tuple[str, float], RewardModel] = {}
_CACHE_LOCK = threading.Lock()


def encode(tokenizer: Any, prompt: Conversation, answer: str | Conversation, tools: list[Any] | None = None) -> list[int]:
    """Token ids of the prompt followed by the answer (one assistant turn, or the answer's messages), rendered as
    training renders a conversation, with the tools the prompt offers."""
    from tunesmith.data.template import tokenize_example

    turns = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else list(answer)
    return list(tokenize_example(tokenizer, [*prompt, *turns], tools=tools).input_ids)


def as_conversation(prompt: Any) -> Conversation:
    """A prompt as messages: a string becomes one user turn (TRL passes text prompts for non-chat data)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]


def is_reward_run(path: str | Path) -> bool:
    """Whether `path` is a finished run of the reward method (its manifest carries RewardDetails)."""
    from tunesmith.run import is_run_dir, load_run
    from tunesmith.train.reward import RewardDetails

    return is_run_dir(path) and isinstance(load_run(path).manifest.details, RewardDetails)


class RewardModel:
    """A reward run's sequence-classification model and tokenizer, ready to score (thread-safe)."""

    def __init__(self, run: Any, model: Any, tokenizer: Any, has_adapter: bool) -> None:
        self.run = run
        self.model = model
        self.tokenizer = tokenizer
        self.has_adapter = has_adapter
        config = getattr(model, "config", None)
        self.context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self._lock = threading.RLock()  # base() holds it across its forwards: no other thread scores meanwhile

    @property
    def name(self) -> str:
        return str(self.run.dir)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """The reward run at `path`, loaded once per process (again when its manifest changes); ModelError when it is
        not a finished reward run."""
        from tunesmith.run import is_run_dir, load_run

        where = Path(path).expanduser().resolve()
        if not is_run_dir(where):
            raise ModelError(f"{path} is not a finished run folder", hint="Point at a run trained with method: reward.")
        key = (str(where), (where / "manifest.json").stat().st_mtime)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is None:
                hit = _CACHE[key] = cls._load(load_run(where))
        return hit

    @classmethod
    def _load(cls, run: Any) -> RewardModel:
        import torch

        from tunesmith import models
        from tunesmith.loader import resolve_run_base
        from tunesmith.train.reward import RewardDetails

        if not isinstance(run.manifest.details, RewardDetails):
            raise ModelError(
                f"{run.dir} is a `{run.manifest.method}` run, not a reward model",
                hint="Train one with method: reward on preference pairs (docs/methods.md).",
            )
        tokenizer = models.load_tokenizer(str(run.adapter_dir))
        m = run.recipe.model
        torch.manual_seed(run.recipe.training.seed)  # the base's score head: as new as it was before training
        has_adapter = (run.adapter_dir / "adapter_config.json").exists()
        if has_adapter:
            from peft import PeftModel

            bnb = models.build_bnb_config(run.recipe.adapter) if run.manifest.quantized_base else None
            base = models.load_model(resolve_run_base(run), m.dtype, m.revision, m.trust_remote_code, bnb, num_labels=1)
            base.config.pad_token_id = tokenizer.pad_token_id
            model = PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()
        else:
            model = models.load_model(str(run.adapter_dir), m.dtype, num_labels=1).eval()
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(run, model, tokenizer, has_adapter)

    @contextmanager
    def base(self) -> Iterator[None]:
        """Score with the adapter disabled: the untrained head on the base (what the reward run started from)."""
        with self._lock, self.model.disable_adapter() if self.has_adapter else nullcontext():
            yield

    def score(self, prompts: Sequence[Any], answers: Sequence[Any], batch_size: int = 8) -> list[float]:
        """One score per (prompt, answer): prompts as messages (or text), answers as text (or assistant messages)."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        ids = [self._fit(encode(self.tokenizer, as_conversation(p), a)) for p, a in zip(prompts, answers)]
        out: list[float] = []
        for start in range(0, len(ids), batch_size):
            out += self._forward(ids[start : start + batch_size])
        return out

    def _fit(self, ids: list[int]) -> list[int]:
        # The head reads the last token: an over-long conversation keeps its end (the answer) within the context.
        return ids[-self.context :] if len(ids) > self.context else ids

    def _forward(self, batch: list[list[int]]) -> list[float]:
        """Right-padded like TRL's preference collator, so the head reads the same last token as in training."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(x) for x in batch)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=device)
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return [float(v) for v in logits[:, 0].float().cpu()]


def reward_function(path: str) -> Any:
    """A GRPO reward (TRL's signature) scoring each completion with the reward run at `path`."""

    def reward_model(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        from tunesmith.train.rewards import completion_text

        return RewardModel.load(path).score(prompts, [completion_text(c) for c in completions])

    return reward_model


def add_scores(path: str | None, convs: list[Conversation], outputs: dict[str, list[str]], summary: Any, rows: Any) -> None:
    """eval with `eval.reward_model`: the metric `reward_model` (mean score of each side's answers) in `summary[side]`
    and each row's `<side>_metrics`. Nothing when no reward model is configured."""
    if not path:
        return
    model = RewardModel.load(path)
    for side, texts in outputs.items():
        values = model.score(convs, texts)
        summary[side]["reward_model"] = sum(values) / len(values) if values else float("nan")
        for row, value in zip(rows, values):
            row[f"{side}_metrics"]["reward_model"] = value
