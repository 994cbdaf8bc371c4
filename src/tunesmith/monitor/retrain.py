"""`tunesmith retrain RECIPE --add FILE`: train the next version on old + new data, gate it against the version being
served, and only then point the serve folder's adapter link at it.

The new run gets a new folder (<output_dir>-r2, -r3, ...); the served run is never touched. Promotion is one atomic
symlink swap, SERVE_DIR/adapters/<name> -> the new run folder, which `tunesmith serve BASE --adapter
<name>=SERVE_DIR/adapters/<name>` loads on its next start; SERVE_DIR/adapters/<name>.promotion.json records it.
The record is written "pending" before the swap and "promoted" after; reading it checks the link itself, so a
crash between the two never leaves a record that names another run than the one served.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunesmith.atomic import replace_symlink, write_text_atomic
from tunesmith.config import load_recipe, recipe_from_dict
from tunesmith.data.template import prompt_messages, reference
from tunesmith.errors import RunError
from tunesmith.eval import metrics, scoring
from tunesmith.loader import load_run_model
from tunesmith.records import GateResult, Record
from tunesmith.run import load_run
from tunesmith.serve.security import check_name
from tunesmith.train import entry
from tunesmith.train.methods import evaluate, held_out_examples

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.records import EvalReport
    from tunesmith.run import Run

log = logging.getLogger(__name__)

PROMOTION_VERSION = 2


class Promotion(Record):
    """SERVE_DIR/adapters/<name>.promotion.json: which run the link points at, what it replaced, the gates it passed."""

    schema_version: int = PROMOTION_VERSION
    name: str
    status: Literal["pending", "promoted"] = Field(
        "promoted", description="pending: written before the link swap; read_promotion settles it from the link."
    )
    run: str = Field(..., description="Run folder now served under `name`.")
    previous: str | None = Field(None, description="Run folder served before.")
    added_data: str
    time: datetime
    gates: list[GateResult]


@dataclass
class Pinned:
    """The held-out rows a retrain keeps: train on `train` (the served data without them), score on `eval`."""

    train: Path
    eval: Path


@dataclass
class Retrained:
    new_run: Path
    served_run: Path
    gates: list[GateResult] = field(default_factory=list)
    link: Path | None = None  # set when promoted

    @property
    def promoted(self) -> bool:
        return self.link is not None


def next_run_dir(run_dir: Path) -> Path:
    """<run_dir>-r2, -r3, ...: the first that does not exist."""
    n = 2
    while (candidate := run_dir.with_name(f"{run_dir.name}-r{n}")).exists():
        n += 1
    return candidate


def next_recipe(
    recipe_path: str | Path, add: str | Path, served_train: Sequence[str] = (), pinned: Pinned | None = None
) -> Recipe:
    """The recipe with the served run's training files (earlier additions included) and `add` appended to data.train,
    writing to the next free run folder (<output_dir>-rN). pinned: train on `pinned.train` (those files without the
    served run's held-out rows) + `add`, scored on `pinned.eval` (the served run's held-out rows), so a fresh
    eval_fraction split of the grown data cannot draw a held-out row into training (monitor/contamination.py)."""
    old = load_recipe(recipe_path)
    data = old.model_dump(mode="json")
    base = [str(pinned.train)] if pinned is not None else [*old.data.train, *served_train]
    data["data"]["train"] = list(dict.fromkeys([*base, str(Path(add).expanduser().resolve())]))
    if pinned is not None:
        data["data"]["eval"] = str(pinned.eval)
    new_dir = next_run_dir(old.run_dir)
    data["output_dir"] = str(new_dir)
    data["name"] = f"{old.name}-{new_dir.name.rpartition('-')[2]}"
    return recipe_from_dict(data, Path(recipe_path).expanduser().resolve().parent, source=str(recipe_path))


def served_run(serve_dir: Path, name: str, recipe_path: str | Path) -> Run:
    """The run served under `name`: the adapter link's target, else the recipe's own (first) run."""
    link = adapter_link(serve_dir, name)
    if link.exists():
        return load_run(link)
    return load_run(load_recipe(recipe_path, check_files=False).run_dir)


def against_served(new: Run, served: Run, report: EvalReport, max_regression: float, progress: Any = None) -> GateResult:
    """The served version answers the new run's held-out prompts (same budget and batch size as its eval, through the
    one scoring path); the new one must score no more than `max_regression` below it on the first primary metric both
    have."""
    examples = held_out_examples(new)[: report.n_examples]  # the rows the new run's eval scored, in its order
    convs = [prompt_messages(e.messages) for e in examples]
    refs = [reference(e.messages) for e in examples]
    loaded = load_run_model(served)
    advance = scoring.progress_advance(progress, "generating (served)", len(convs))
    batch = int(report.generation.get("batch_size") or new.recipe.eval.batch_size)
    budget = int(report.generation["max_new_tokens"])
    answers = scoring.answer(loaded.model, loaded.tokenizer, convs, budget, batch, advance, loaded.thinking)
    served_summary = scoring.score(answers.texts, refs, report.json_mode).aggregate
    tuned = report.summary.get("tuned", {})
    metric = next((m for m in metrics.primary_metrics(report.json_mode) if m in tuned and m in served_summary), None)
    rule = f"new >= served - {max_regression:g}"
    if metric is None:
        return GateResult(name="beats_served", rule=rule, status="fail", detail="no primary metric measured on both")
    delta = tuned[metric] - served_summary[metric]
    return GateResult(
        name="beats_served",
        rule=f"{metric}: {rule}",
        value=delta,
        status="pass" if delta >= -max_regression - 1e-9 else "fail",
        detail=f"{metric} {tuned[metric]:.4f} new vs {served_summary[metric]:.4f} served ({served.dir.name}), "
        f"{len(convs)} prompts",
    )


def _record_path(serve_dir: Path, name: str) -> Path:
    return serve_dir / "adapters" / f"{name}.promotion.json"


def adapter_link(serve_dir: Path, name: str) -> Path:
    """SERVE_DIR/adapters/<name>, refused when something other than a link made by retrain sits there."""
    link = serve_dir / "adapters" / name
    if link.exists() and not link.is_symlink():
        raise RunError(
            f"{link} exists and is not an adapter link made by tunesmith retrain", hint="Move it away or pick another --name."
        )
    return link


def promote(serve_dir: Path, name: str, run_dir: Path, previous: Path, added: Path | str, results: list[GateResult]) -> Path:
    """Point SERVE_DIR/adapters/<name> at run_dir in one atomic rename, recorded before ("pending") and after
    ("promoted"). Refuses to replace anything at that path that is not a link (a folder or file the user put there).
    added: the data the new run added (a file), or what promoted it (a rollout)."""
    check_name(name)
    link = adapter_link(serve_dir, name)
    link.parent.mkdir(parents=True, exist_ok=True)
    record = Promotion(
        name=name,
        status="pending",
        run=str(run_dir.resolve()),
        previous=str(previous),
        added_data=str(added),
        time=datetime.now(timezone.utc),
        gates=results,
    )
    write_text_atomic(_record_path(serve_dir, name), record.model_dump_json(indent=1) + "\n")
    replace_symlink(link, run_dir.resolve())  # readers see the old target or the new one, never neither
    record.status = "promoted"
    write_text_atomic(_record_path(serve_dir, name), record.model_dump_json(indent=1) + "\n")
    return link


def read_promotion(path: str | Path) -> Promotion:
    """A promotion record, settled by the link beside it: a "pending" record whose run the link names was promoted
    (the process stopped before it could say so); one whose link names another run describes the run still served
    (the swap never happened: `run` is that target, `previous` None)."""
    path = Path(path)
    record = Promotion.model_validate_json(path.read_text(encoding="utf-8"))
    if record.schema_version > PROMOTION_VERSION:
        raise RunError(f"{path} has schema_version {record.schema_version}, newer than this tunesmith reads")
    link = path.with_name(path.name.removesuffix(".promotion.json"))
    target = os.path.realpath(link) if link.is_symlink() else None
    if record.status == "pending" and target == record.run:
        return record.model_copy(update={"status": "promoted"})
    if record.status == "pending":
        log.warning("%s: the promotion of %s was interrupted before the link moved; %s is still served", path, record.run, target)
        return record.model_copy(update={"run": target or record.previous or "", "previous": None, "gates": []})
    return record


def retrain(
    recipe_path: str | Path,
    add: str | Path,
    serve_dir: str | Path,
    name: str,
    progress: Any = None,
    force: bool = False,
    promote_when_passed: bool = True,
    pin: Any = None,
) -> Retrained:
    """Train on old + new data into a new run folder, run its release gates plus `beats_served` against the served
    run, and promote it only when every one passes (promote_when_passed False: the caller rolls it out instead).
    pin: a function (served run -> Pinned | None) keeping the served run's held-out rows held out (next_recipe)."""
    from tunesmith.serve.server import serve_dir as claim_serve_dir
    from tunesmith.train.start import release_run_dir

    check_name(name)  # before anything is trained: a name that cannot be served is refused first
    add = Path(add).expanduser().resolve()
    if not add.is_file():
        raise RunError(f"--add {add} not found")
    folder = claim_serve_dir(Path(serve_dir))  # refuses a folder serve did not make
    served = served_run(folder, name, recipe_path)
    recipe = next_recipe(recipe_path, add, list(served.recipe.data.train), pin(served) if pin is not None else None)
    try:
        new = load_run(entry.run(recipe, force=force).dir)
    finally:
        release_run_dir(recipe.run_dir)
    report = evaluate(new, progress=progress)
    results = [*report.gates, against_served(new, served, report, recipe.monitor.max_regression, progress)]
    out = Retrained(new.dir, served.dir, results)
    failed = [g.name for g in results if not g.passed]
    if failed:
        log.warning("not promoted: %s", ", ".join(failed))
    elif promote_when_passed:
        out.link = promote(folder, name, new.dir, served.dir, add, results)
    return out
