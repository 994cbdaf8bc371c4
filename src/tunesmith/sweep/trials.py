"""Run a sweep's trials through an Optuna study kept in the sweep folder (SQLite: DIR/optuna.db).

Each trial is one grid point: enqueued with its values, trained as a normal run into DIR/trials/trial-NN (sealed
like any run), then scored by tunesmith.eval.compare.evaluate, the function `tunesmith eval` runs: the run's own
held-out set, every metric, the recipe's gates. At each checkpoint the trial reports the metric on the first
eval.select_examples held-out rows (the scoring of checkpoint selection) and Optuna's median pruner stops it when it
is clearly behind the trials before it at that step; the run is then saved as it stands and marked pruned.

Killed mid-way (a crash, Ctrl-C, a lost machine), a trial stays RUNNING in the study. The next `tunesmith sweep` of
the same folder (the folder's lock says no other one is running) marks it failed as interrupted, and runs its point
again, continuing from the trial's last complete checkpoint; a trial is counted once, by its last attempt.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tunesmith import models
from tunesmith.errors import TunesmithError
from tunesmith.eval import registry, select
from tunesmith.eval.gates import gate_values
from tunesmith.eval.select import LOSSES, load_checkpoint
from tunesmith.run import load_run
from tunesmith.sweep.spec import SweepSpec
from tunesmith.train import entry, methods
from tunesmith.train.methods import evaluate

log = logging.getLogger(__name__)

DB, STUDY, LOCK = "optuna.db", "sweep", ".sweep.lock"
DONE = ("complete", "pruned", "failed")


def open_study(out: Path, spec: SweepSpec) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if spec.prune else optuna.pruners.NopPruner()
    direction: Literal["maximize", "minimize"] = "maximize" if spec.higher_is_better else "minimize"
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / DB}")
    return optuna.create_study(study_name=STUDY, storage=storage, direction=direction, pruner=pruner, load_if_exists=True)


def recover(study: Any) -> list[int]:
    """Mark the trials a killed sweep left RUNNING (or enqueued and never started) as failed, interrupted: their
    points run again. Returns those points."""
    from optuna.trial import TrialState

    # Optuna has no public call to finish another process's trial: its storage and the trial's id are the one place
    # this module reaches inside (test_sweep's killed-trial test fails loudly if an upgrade moves them).
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        found.append(int(t.user_attrs.get("point", -1)))
    return found


def status_of(trial: Any) -> str:
    """complete | pruned | failed (an error) | interrupted (to run again) | running."""
    name = str(trial.state.name).lower()
    if name == "fail":
        return "interrupted" if trial.user_attrs.get("interrupted") else "failed"
    return name


def last_trials(study: Any) -> dict[int, Any]:
    """Point index -> its latest trial."""
    out: dict[int, Any] = {}
    for t in study.get_trials(deepcopy=False):
        if "point" in t.user_attrs:
            out[int(t.user_attrs["point"])] = t
    return out


class Pruning:
    """A TrainerCallback (built in `callback`): the metric at each checkpoint, reported to the trial; stops training
    when the pruner says the trial is clearly losing."""

    def __init__(self, trial: Any, recipe: Any, metric: str):
        self.trial, self.recipe, self.metric = trial, recipe, metric
        self.method = methods.get(recipe.method)
        self.base_path = models.resolve_base(recipe.model.base)
        self.tokenizer = models.load_tokenizer(self.base_path)
        self.examples = self.method.eval_examples(recipe)[: recipe.eval.select_examples]  # the held-out set's first rows
        self.values: dict[int, float] = {}
        self.pruned_at: int | None = None

    def score(self, folder: Path) -> float:
        """The metric of the checkpoint in `folder`, loaded beside the training model as checkpoint selection loads
        it (eval.select), without touching training's random state."""
        import gc
        import random

        import numpy as np
        import torch

        py, npy = random.getstate(), np.random.get_state()
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model = load_checkpoint(self.recipe, self.base_path, folder)
                value = float(select.score(model, self.tokenizer, self.recipe, self.method, self.examples, self.metric))
                del model
                gc.collect()
                return value
        finally:
            random.setstate(py)
            np.random.set_state(npy)

    def at_checkpoint(self, step: int, folder: Path) -> bool:
        """Report the step's value; True when the trial should stop here."""
        value = self.score(folder)
        self.values[step] = value
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned_at = step
        return self.pruned_at is not None


def callback(pruning: Pruning) -> Any:
    from transformers import TrainerCallback

    class PruneAtCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # written whole by AtomicCheckpoints
            if (folder / "COMPLETE").exists() and pruning.at_checkpoint(state.global_step, folder):
                control.should_training_stop = True

    return PruneAtCheckpoints()


def prunable(recipe: Any, metric: str) -> bool:
    """Whether checkpoints can be scored on `metric` (per-example metrics, reward, eval_loss, perplexity)."""
    m = registry.metric(metric)
    return m.fn is not None or m.name in LOSSES or (m.name == "reward" and methods.get(recipe.method).samples_completions)


def train_trial(recipe: Any, pruning: Pruning | None) -> Any:
    """Train (or continue, after a kill) the trial's run; a run that already finished is read back as it is."""
    from tunesmith.train.checkpoints import latest_complete_checkpoint

    run_dir = recipe.run_dir
    if (run_dir / "manifest.json").exists():
        return load_run(run_dir)  # killed while it was being evaluated
    resume = latest_complete_checkpoint(run_dir / "checkpoints") is not None
    if run_dir.exists() and not resume:  # a start this sweep made that left no checkpoint: nothing to keep
        shutil.rmtree(run_dir)
    return entry.run(recipe, resume=resume, callbacks=[callback(pruning)] if pruning else [])


def run_trial(study: Any, spec: SweepSpec, index: int, point: dict[str, Any], recipe: Any, planned: Any) -> Any:
    """One trial to the end: trained, pruned or evaluated, told to the study with what the report shows."""
    study.enqueue_trial({k: v for k, v in point.items()}, user_attrs={"point": index}, skip_if_exists=False)
    trial = study.ask()
    for key, values in spec.grid.items():
        trial.suggest_categorical(key, values)  # the enqueued value: recorded as the trial's parameter
    attrs = {"point": index, "run_dir": str(recipe.run_dir), "planned_s": planned.seconds if planned else None}
    attrs["usd"] = planned.usd if planned else None
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    started = time.time()
    try:
        pruning = Pruning(trial, recipe, spec.metric) if spec.prune and prunable(recipe, spec.metric) else None
        run = train_trial(recipe, pruning)
        trial.set_user_attr("train_s", run.manifest.figures.wall_time_s)
        if pruning is not None and pruning.pruned_at is not None:
            trial.set_user_attr("pruned_value", pruning.values[pruning.pruned_at])
            trial.set_user_attr("seconds", time.time() - started)
            return study.tell(trial, state=_state("PRUNED"))
        report = evaluate(run)
        value = gate_values(report).get(spec.metric)
        trial.set_user_attr("gates_failed", [g.name for g in report.gates if g.status == "fail"])
        trial.set_user_attr("gates_checked", len(report.gates))
        trial.set_user_attr("seconds", time.time() - started)
        if value is None:
            trial.set_user_attr("error", f"{spec.metric} is not in the trial's eval report")
            return study.tell(trial, state=_state("FAIL"))
        return study.tell(trial, value)
    except TunesmithError as exc:  # this trial's recipe or data is the problem: the others still run
        if _stopped(exc):  # SIGTERM / Ctrl-C: the trial saved a checkpoint; the next sweep continues it
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=_state("FAIL"))
            raise
        trial.set_user_attr("error", exc.message)
        trial.set_user_attr("seconds", time.time() - started)
        return study.tell(trial, state=_state("FAIL"))


def _stopped(exc: BaseException) -> bool:
    from tunesmith.train.faults import TrainingInterrupted

    return isinstance(exc, TrainingInterrupted)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def each_pending(study: Any, order: list[int]) -> Callable[[], list[int]]:
    """The points (in sweep order) whose latest trial is neither complete, pruned nor failed."""

    def pending() -> list[int]:
        latest = last_trials(study)
        return [i for i in order if i not in latest or status_of(latest[i]) not in DONE]

    return pending
