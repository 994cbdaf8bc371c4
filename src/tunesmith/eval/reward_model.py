"""The one reward-model scorer: a finished `method: reward` run, loaded once per process, scores answers to prompts.

GRPO (`grpo.rewards: [run:PATH]`), eval (`eval.reward_model: PATH`, the metric `reward_model`) and the monitor
(`monitor.reward_model`, mean reward of served answers per window and per rollout variant) all call `RewardModel`, so
a score means the same thing wherever it appears. A score is the head's raw output (a logit, unbounded): only
differences between scores of the same model mean something (P(a preferred to b) = sigmoid(score_a - score_b)).

Each (prompt, answer) is rendered and tokenized by `encode`, the same function the reward method trains on
(data.template.tokenize_example: the conversation as every method renders it), with the tools the prompt offered, so
a served answer is scored exactly as a training pair was. An answer that calls a tool is scored as the assistant
message with its `tool_calls` (as a preference pair of calls is trained), whether it arrives as that message, as
eval's tool turn or as the text the model wrote (parsed in the reward model's family format).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tunesmith import families, models
from tunesmith.data.template import tokenize_example
from tunesmith.data.tool_shapes import as_conversation
from tunesmith.errors import ModelError
from tunesmith.eval.tool_metrics import parse_turn
from tunesmith.families.tools import parse_tool_calls
from tunesmith.loader import resolve_run_base
from tunesmith.method_details import RewardDetails
from tunesmith.run import is_run_dir, load_run

log = logging.getLogger(__name__)

Conversation = list[dict[str, Any]]
_CACHE: dict[tuple[str, float], RewardModel] = {}
_CACHE_LOCK = threading.Lock()


def encode(tokenizer: Any, prompt: Conversation, answer: str | Conversation, tools: list[Any] | None = None) -> list[int]:
    """Token ids of the prompt followed by the answer (one assistant turn, or the answer's messages), rendered as
    training renders a conversation, with the tools the prompt offers."""
    turns = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else list(answer)
    return list(tokenize_example(tokenizer, [*prompt, *turns], tools=tools).input_ids)


def as_answer(answer: str | Conversation, tools: list[Any] | None, style: str | None) -> str | Conversation:
    """What `encode` takes for an answer: messages as they are; on a prompt that offered tools, a completion that
    calls in the family's format (`style`) as the assistant message with its `tool_calls` (arguments as written);
    any other text as it is. Eval's tool turns (tunesmith.eval.tool_metrics) are read as the text they came from."""
    if not isinstance(answer, str):
        return answer
    turn = parse_turn(answer)
    text = turn.text if turn is not None and turn.text is not None else answer
    parsed = parse_tool_calls(text, style) if tools else None
    if parsed is None or parsed.error is not None or not parsed.calls:
        return text
    calls = [{"id": f"call_{k}", **c} for k, c in enumerate(parsed.calls)]
    return [{"role": "assistant", "content": parsed.content or None, "tool_calls": calls}]


def is_reward_run(path: str | Path) -> bool:
    """Whether `path` is a finished run of the reward method (its manifest carries RewardDetails)."""
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

    @property
    def style(self) -> str | None:
        """The tool-call format of the reward model's family (families.tools.STYLES): how a written call is read."""
        return families.for_tokenizer(self.tokenizer).tools

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """The reward run at `path`, loaded once per process (again when its manifest changes); ModelError when it is
        not a finished reward run."""
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

    def score(
        self,
        prompts: Sequence[Any],
        answers: Sequence[Any],
        batch_size: int = 8,
        tools: Sequence[list[Any] | None] | None = None,
    ) -> list[float]:
        """One score per (prompt, answer): prompts as messages (or text), answers as text (or assistant messages),
        `tools`: the functions each prompt offered (None: none), rendered into it as training renders a pair's."""
        offered = list(tools) if tools is not None else [None] * len(prompts)
        if not len(prompts) == len(answers) == len(offered):
            raise ValueError(f"{len(prompts)} prompts, {len(answers)} answers and {len(offered)} tool lists")
        style = self.style if any(offered) else None
        ids = [
            self._fit(encode(self.tokenizer, as_conversation(p), as_answer(a, t, style), t or None))
            for p, a, t in zip(prompts, answers, offered)
        ]
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


def add_scores(
    path: str | None,
    convs: list[Conversation],
    outputs: dict[str, list[str]],
    summary: Any,
    rows: Any,
    tools: Sequence[list[Any] | None] | None = None,
) -> None:
    """eval with `eval.reward_model`: the metric `reward_model` (mean score of each side's answers, each prompt with
    the `tools` its row offers) in `summary[side]` and each row's `<side>_metrics`. Nothing when no reward model is
    configured."""
    if not path:
        return
    model = RewardModel.load(path)
    for side, texts in outputs.items():
        values = model.score(convs, texts, tools=tools)
        summary[side]["reward_model"] = sum(values) / len(values) if values else float("nan")
        for row, value in zip(rows, values):
            row[f"{side}_metrics"]["reward_model"] = value
