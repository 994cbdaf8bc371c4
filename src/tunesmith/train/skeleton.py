"""The one training path every method runs through: prepare → start → datasets → levers → model → trainer → train →
record → finish. What differs between methods is declared by the method (train/method.py), never branched on here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.plan import advisor
from tunesmith.records import Measured, Speed
from tunesmith.run import Run, peak_memory_mb
from tunesmith.train import compact, dist, faults, policy, speed, start, upcast, varlen
from tunesmith.train.callbacks import standard_callbacks
from tunesmith.train.finish import finish_run
from tunesmith.train.method import Datasets, Method, Parts

if TYPE_CHECKING:
    from tunesmith.config import Recipe

log = logging.getLogger(__name__)


@dataclass
class Built:
    """Everything a run needs between data and trainer.train(): used by run() and by bench/train_throughput.py."""

    start: start.Start
    trainer: Any
    data: Datasets
    speed: Speed
    plan: Any  # tunesmith.records.Plan, or None (a method without row levers, or a config the planner cannot read)
    model: Any = None  # the transformers model under the adapter
    attention: str | None = None  # its attention implementation before speed.attention=varlen replaced it
    unwrap: Any = None  # undoes speed.shared_prefix's wrapper of the backbone (train/compact.py), or None

    def restore_attention(self) -> None:
        """Back to the model's own attention and forward before anything generates or saves (varlen and the
        shared-prefix wrapper serve training only)."""
        if self.attention is not None:
            varlen.restore(self.model, self.attention)
            self.attention = None
        if self.unwrap is not None:
            self.unwrap()
            self.unwrap = None


def build(recipe: Recipe, method: Method[Any], resume: bool = False, force: bool = False, extra: Sequence[Any] = ()) -> Built:
    """Run folder, the datasets, the levers, the model and the trainer of the method `method` trains the (prepared)
    recipe as (Method.trains_as); `method`: the recipe's own. `extra` callbacks join the standard ones."""
    st = start.begin(recipe, method, resume, force)  # blocking data errors stop here, before any model loads
    method = method.trains_as(recipe)
    data = method.datasets(recipe, st.tokenizer)
    # leading tokens every training row has (the system prompt, typically): speed.shared_prefix runs them once a pass
    shared = compact.common_prefix(list(data.train["input_ids"])) if method.packs_rows else 0
    estimate = _plan(recipe, data, shared) if method.packs_rows else None
    # the one precision decision; gradient_checkpointing auto turns on when the estimate does not fit
    levers = speed.for_method(recipe, method, estimate, data.lengths, shared)
    speed.score_labelled_positions_only(levers.labelled_logits)

    torch.manual_seed(recipe.training.seed)
    model = method.load_model(recipe, st.base_path, levers.base_dtype)  # 4-bit NF4 for qlora
    if levers.frozen_bf16:  # fp32 training: the frozen decoder linears stored in bf16, multiplied in fp32
        upcast.install(model)
    if not varlen.supports(model):  # Gemma 2: its own attention, so neither lever that runs rows through varlen
        levers = levers.model_copy(update={"attention": "mask", "shared_prefix": False})  # recorded as trained
    attention = varlen.use(model) if levers.attention == "varlen" else None  # restored before anything generates
    peft_config = policy.peft_config(recipe, model, st.base_path)
    callbacks = standard_callbacks(recipe, st.run_dir) + list(extra)
    trainer = method.trainer(recipe, Parts(model, data, st.tokenizer, peft_config, callbacks, st.run_dir, levers))
    unwrap = speed.apply_to_model(levers, trainer.model)
    return Built(st, trainer, data, levers, estimate, model, attention, unwrap)


def _plan(recipe: Recipe, data: Datasets, shared: int = 0) -> Any:
    """The planner's estimate for this run on this machine, from the rows already tokenized (their lengths)."""
    counts = data.counts.train
    trained = counts.trained_tokens / max(counts.tokens, 1) if counts is not None else 0.0
    try:  # every process of every node shares the steps: the time is that of world_size devices
        return advisor.plan(
            recipe, gpu=advisor.local_gpu(), nproc=dist.world_size(), lengths=data.lengths, trained=trained, shared=shared
        )
    except (KeyError, ValueError, OSError) as exc:  # a config.json the planner cannot read: train anyway
        log.warning("no plan for this model (%s: %s)", type(exc).__name__, exc)
        return None


def run(recipe: Recipe, method: Method[Any], resume: bool = False, force: bool = False, callbacks: Sequence[Any] = ()) -> Run:
    """Train the recipe with `method` (its own, train/methods.py's) end to end and return the run (read back from its
    folder)."""
    recipe = method.prepare(recipe, resume)  # before the run folder is locked: a broken reward or teacher fails here
    b = build(recipe, method, resume, force, callbacks)
    result = faults.fit(b.trainer, recipe, b.start.checkpoint)  # trainer.train under the fault policy
    final_eval = b.trainer.evaluate() if b.data.eval is not None else {}  # logged to metrics.jsonl by MetricsLog
    b.restore_attention()
    plan = b.plan
    if plan is not None:
        measured = Measured(peak_mb=round(peak_memory_mb(), 1), seconds=round(result.metrics.get("train_runtime", 0.0), 1))
        plan = plan.model_copy(update={"measured": measured})
    return finish_run(
        recipe,
        method,
        b.trainer,
        b.start.tokenizer,
        result,
        b.data.counts,
        b.start.started,
        b.start.checkpoint,
        base_path=b.start.base_path,
        final_eval=final_eval,
        details=method.record(recipe, b.trainer, final_eval),
        speed=b.speed,
        plan=plan,
    )
