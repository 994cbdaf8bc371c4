"""`tunesmith sweep` end to end: claim the folder, open (or continue) the study, run what the budget allows, report.

The folder holds sweep.json (the definition, written once), optuna.db (the study), trials/ (one run folder per grid
point) and the reports (report.py), rewritten after every trial so an interrupted sweep still shows what it did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith import outputs
from tunesmith.atomic import write_text_atomic
from tunesmith.config import load_recipe
from tunesmith.data.template import reference
from tunesmith.errors import RecipeError, RunError, TunesmithError
from tunesmith.eval import metrics, registry
from tunesmith.plan import advisor
from tunesmith.sweep import budget, report, spec, trials
from tunesmith.sweep.spec import SweepSpec
from tunesmith.train import methods
from tunesmith.train.methods import eval_examples

COMMAND = "sweep"


def new_spec(
    recipe_path: Path,
    grid: dict[str, list[Any]],
    sets: list[str],
    metric: str | None,
    budget_s: float | None,
    max_trials: int | None,
    prune: bool,
) -> SweepSpec:
    """The sweep's definition, checked: the recipe loads with every point's values; the metric is a registry one."""
    recipe = load_recipe(recipe_path, sets)
    for key in grid:
        if key.split(".")[0] in ("output_dir", "name"):
            raise RecipeError([("--set-grid", f"{key}: every trial gets its own name and folder under --out")])
    for point in spec.points(grid):
        load_recipe(recipe_path, [*sets, *spec.point_overrides(point)], check_files=False)  # a bad value: said now
    name = metric or default_metric(recipe)
    try:
        m = registry.metric(name)
    except ValueError as exc:
        raise RecipeError([("--metric", str(exc))]) from None
    return SweepSpec(
        recipe=str(Path(recipe_path).resolve()),
        recipe_sha256=hashlib.sha256(Path(recipe_path).read_bytes()).hexdigest(),
        grid=grid,
        sets=sets,
        metric=m.name,
        higher_is_better=m.higher_is_better,
        budget_s=budget_s,
        max_trials=max_trials,
        prune=prune,
        seed=recipe.training.seed,
    )


def default_metric(recipe: Any) -> str:
    """eval.select_checkpoint when set; else the first primary metric of the held-out answers (JSON or text); the
    first grader's pass rate, or the reward, for rows without answers."""
    if recipe.eval.select_checkpoint:
        return str(recipe.eval.select_checkpoint)
    refs = [reference(e.messages) for e in eval_examples(recipe)]
    if any(r.strip() for r in refs):
        return metrics.primary_metrics(metrics.references_are_json(refs))[0]
    graders = recipe.eval.graders if isinstance(recipe.eval.graders, list) else []
    if graders:
        return f"graders.{graders[0]['name']}"
    if methods.get(recipe.method).samples_completions:  # scored by its rewards
        return "reward"
    raise RecipeError([("--metric", "the held-out rows have no answers: name the metric to rank trials by")])


def claim(out: Path, wanted: SweepSpec) -> SweepSpec:
    """The sweep folder for this definition: new, or an earlier run of the same sweep (continued)."""
    out = outputs.claim_dir(out, COMMAND, reuse=True, what="sweep folder")
    path = out / spec.SPEC
    if not path.exists():
        write_text_atomic(path, wanted.model_dump_json(indent=1) + "\n")
        return wanted
    try:
        held = SweepSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is not a sweep definition: {exc}") from None
    same = ("recipe", "recipe_sha256", "grid", "sets", "metric", "prune")
    diffs = [k for k in same if getattr(held, k) != getattr(wanted, k)]
    if diffs:
        raise RunError(
            f"{out} holds another sweep (its {', '.join(diffs)} differ{'s' if len(diffs) == 1 else ''})",
            hint="Continue it with the same recipe file and options, or sweep into a new --out folder.",
        )
    return held.model_copy(update={"budget_s": wanted.budget_s, "max_trials": wanted.max_trials})  # limits may change


def run_sweep(out: Path, wanted: SweepSpec, on_trial: Callable[[str], None] | None = None) -> report.SweepReport:
    """Run (or continue) the sweep in `out`; returns the report also written there."""
    from filelock import FileLock, Timeout

    sweep = claim(out, wanted)
    out = Path(out).expanduser().resolve()
    lock = FileLock(str(out / trials.LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunError(f"another tunesmith sweep is running in {out}", hint="Wait for it, or sweep into another --out.") from None
    try:
        study = trials.open_study(out, sweep)
        trials.recover(study)
        points = spec.points(sweep.grid)
        pending = trials.each_pending(study, spec.order(len(points), sweep.seed))
        calib, used = _calibration(study)
        skipped: dict[int, str] = {}
        hardware = _hardware(advisor.local_gpu())
        for index in pending():
            reason, recipe, plan = _prepare(sweep, out, index, points[index], calib, used, _ran(study))
            if reason is not None:
                skipped[index] = reason
                continue
            if on_trial is not None:
                on_trial(f"trial {index}: " + ", ".join(f"{k}={v}" for k, v in points[index].items()))
            trials.run_trial(study, sweep, index, points[index], recipe, plan)
            calib, used = _calibration(study)
            report.write(out, _report(sweep, study, points, skipped, used, hardware), points)
        final = _report(sweep, study, points, skipped, used, hardware)
        report.write(out, final, points)
        return final
    finally:
        lock.release()


def _prepare(
    sweep: SweepSpec, out: Path, index: int, point: dict[str, Any], calib: budget.Calibration, used: float, ran: int
) -> tuple[str | None, Any, Any]:
    """(why the trial cannot run now, or None; its recipe; its plan)."""
    if sweep.max_trials is not None and ran >= sweep.max_trials:
        return f"--trials {sweep.max_trials} reached", None, None
    try:
        recipe = spec.trial_recipe(sweep, out, index, point)
    except TunesmithError as exc:
        return f"its recipe does not load: {exc.message}", None, None
    plan = budget.plan_trial(recipe)
    expected = calib.expect(plan.seconds if plan is not None else 0.0)
    return budget.skip_reason(plan, expected, used, sweep.budget_s), recipe, plan


def _ran(study: Any) -> int:
    return sum(trials.status_of(t) in trials.DONE for t in trials.last_trials(study).values())


def _calibration(study: Any) -> tuple[budget.Calibration, float]:
    """The finished trials' calibration and the seconds they used."""
    calib, used = budget.Calibration(), 0.0
    for t in trials.last_trials(study).values():
        a = t.user_attrs
        if trials.status_of(t) in trials.DONE and a.get("seconds") is not None:
            used += a["seconds"]
            if a.get("train_s") is not None:
                calib.add(a.get("planned_s"), a["train_s"], a["seconds"])
    return calib, used


def _report(
    sweep: SweepSpec, study: Any, points: list[dict[str, Any]], skipped: dict[int, str], used: float, hardware: str
) -> report.SweepReport:
    latest = trials.last_trials(study)
    rows = []
    for index, point in enumerate(points):
        t = latest.get(index)
        if t is not None and trials.status_of(t) != "interrupted":
            rows.append(report.trial_result(index, point, t, trials.status_of(t)))
        elif index in skipped:
            rows.append(report.TrialResult(trial=index, params=point, status="skipped", reason=skipped[index]))
        else:
            rows.append(report.trial_result(index, point, t, "interrupted" if t is not None else "pending"))
    winner, passes = report.choose(rows, sweep.higher_is_better)
    return report.SweepReport(
        spec=sweep, trials=rows, winner=winner, winner_passes_gates=passes, used_s=round(used, 1), hardware=hardware
    )


def _hardware(gpu: str) -> str:
    """The machine the sweep ran on, as its figures should be read: the GPU, or the CPU's model name."""
    if gpu != "cpu":
        return gpu
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return f"CPU {platform.processor() or platform.machine()}"
