"""`tunesmith loop SERVE_DIR`: one cycle of monitor -> feedback export -> retrain -> gates -> canary, on a timer.

A cycle, in order (each step can end it; see docs/monitoring.md for the exit codes):
1. a rollout of the served name still running is checked first (monitor/rollout.py): promoted, rolled back, or left
   waiting; while one runs nothing is retrained (one candidate at a time);
2. monitor: the drift report of the served run's traffic (monitor/traffic.py), written into the cycle's folder;
3. export: corrections and drifted traffic (demonstration recipes) or preference pairs (pair recipes) from the log;
4. screen (monitor/contamination.py): rows an earlier cycle tried, duplicates, rows already in the training data and
   rows holding an eval prompt are dropped, each counted; nothing left -> nothing to learn, and nothing changes;
5. retrain (monitor/retrain.py) on the screened rows (saved in the cycle's folder) into a new run folder, scored on
   the served run's held-out rows; its gates (eval's and beats_served) must pass;
6. canary (or shadow): `tunesmith rollout` of the new run; the next cycles (or `rollout --check`) decide it. With
   share 0 the new run is promoted at once, as `tunesmith retrain` does.
Each cycle writes SERVE_DIR/loop/<UTC time>/cycle.json and cycle.html (the studio's Monitor page links them).
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunesmith.config import MonitorSection, load_recipe
from tunesmith.data.convert import write_rows
from tunesmith.data.formats import PREFERENCE_SHAPES, detect_shape, read_records
from tunesmith.errors import RunError, TunesmithError
from tunesmith.monitor import feedback
from tunesmith.monitor import rollout as ro
from tunesmith.monitor.contamination import pin_held_out, row_keys, screen, served_data
from tunesmith.monitor.loop_report import CYCLE_NAME, write_cycle
from tunesmith.monitor.retrain import promote, retrain, served_run
from tunesmith.records import GateResult, Record, read_record
from tunesmith.serve.rollout import ACTIVE, rollout_path

log = logging.getLogger(__name__)

LOOP_DIR = "loop"
CYCLE_VERSION = 1
EXIT = {"ok": 0, "error": 1, "gates_failed": 3, "drift": 4}
Outcome = Literal[
    "nothing_to_learn",
    "drift_nothing_to_learn",
    "rollout_waiting",
    "rollout_promoted",
    "rollout_rolled_back",
    "gates_failed",
    "canary_started",
    "shadow_started",
    "promoted",
    "error",
]
EXIT_CODES: dict[str, int] = {
    "nothing_to_learn": EXIT["ok"],
    "rollout_waiting": EXIT["ok"],
    "rollout_promoted": EXIT["ok"],
    "canary_started": EXIT["ok"],
    "shadow_started": EXIT["ok"],
    "promoted": EXIT["ok"],
    "drift_nothing_to_learn": EXIT["drift"],
    "rollout_rolled_back": EXIT["gates_failed"],
    "gates_failed": EXIT["gates_failed"],
    "error": EXIT["error"],
}
"""0: nothing to do, or a step forward (canary started, promoted, rollout waiting) · 3: a gate failed (the new run's,
or the candidate's on live traffic: rolled back) · 4: a signal drifted and there is nothing to learn from (feedback
needed) · 1: the cycle failed."""


class Cycle(Record):
    """SERVE_DIR/loop/<time>/cycle.json: what one cycle saw and did."""

    schema_version: int = CYCLE_VERSION
    serve_dir: str
    name: str
    started: datetime
    finished: datetime | None = None
    outcome: Outcome = "error"
    exit_code: int = 1
    served_run: str | None = None
    drifted: list[str] = Field(default_factory=list, description="Signals the monitor found drifting.")
    exported: int = Field(0, description="Rows the feedback export produced (corrections, drifted traffic or pairs).")
    skipped: dict[str, int] = Field(default_factory=dict, description="Feedback that could not become a row, by reason.")
    dropped: dict[str, int] = Field(default_factory=dict, description="Rows screened out, by reason (eval matches included).")
    added: int = Field(0, description="Rows the new run trained on in addition to the served run's data.")
    added_file: str | None = None
    new_run: str | None = None
    gates: list[GateResult] = Field(default_factory=list)
    rollout: str | None = Field(None, description="What happened to the rollout (started, promoted, rolled back, waiting).")
    error: str | None = None


def read_cycle(path: str | Path) -> Cycle:
    """A cycle.json (loop_report.py writes it) as its record."""
    return read_record(Path(path), Cycle, CYCLE_VERSION)


def cycles(serve_dir: str | Path, limit: int = 20) -> list[tuple[str, Cycle]]:
    """(folder name, Cycle) of the latest cycles of a serve folder, newest first; unreadable ones are left out."""
    out = []
    for path in sorted(Path(serve_dir, LOOP_DIR).glob(f"*/{CYCLE_NAME}"), reverse=True)[:limit]:
        try:
            out.append((path.parent.name, read_cycle(path)))
        except RunError:
            continue
    return out


@dataclass
class LoopOptions:
    """What `tunesmith loop` was asked (see its --help)."""

    serve_dir: Path
    recipe: Path
    name: str
    share: float = 0.1
    shadow: bool = False
    min_requests: int = 100
    gates: list[str] = field(default_factory=list)
    reward_model: str | None = None
    log: str | None = None  # the request log: default the serve folder's
    embedder: str | None = None
    force: bool = False


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_every(text: str) -> float:
    """Seconds of `30m`, `6h`, `24h`, `7d`; ValueError for anything else (or under a minute)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"--every {text!r} is not a duration like 30m, 6h, 24h or 7d")
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds < 60:
        raise ValueError(f"--every {text!r} is under a minute: a cycle trains a model")
    return seconds


@contextmanager
def cycle_lock(folder: Path) -> Iterator[None]:
    """One cycle at a time per serve folder (a cron job that overlaps the previous one is refused, not run twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"another loop cycle is running on {folder.parent}", hint="Let it finish; cycles never overlap."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cycle_dir(serve_dir: Path, started: datetime) -> Path:
    return serve_dir / LOOP_DIR / started.strftime("%Y%m%dT%H%M%SZ")


def _finish(cycle: Cycle, outcome: Outcome, folder: Path, monitor: Any = None) -> Cycle:
    cycle.outcome, cycle.exit_code, cycle.finished = outcome, EXIT_CODES[outcome], datetime.now(timezone.utc)
    write_cycle(folder, cycle, monitor)
    return cycle


def run_cycle(opts: LoopOptions) -> Cycle:
    """One cycle; its report is written whatever happens (outcome error and the message when a step failed)."""
    from tunesmith.serve.server import serve_dir as claim_serve_dir

    if not Path(opts.serve_dir).expanduser().is_dir():  # a mistyped path: no folder made, no report left there
        raise RunError(
            f"no serve folder at {opts.serve_dir}",
            hint="Pass the folder `tunesmith serve` runs in (its request log and adapters/NAME link).",
        )
    folder = claim_serve_dir(Path(opts.serve_dir))  # refuses a folder serve did not make
    started = datetime.now(timezone.utc)
    cycle = Cycle(serve_dir=str(folder), name=opts.name, started=started)
    out = _cycle_dir(folder, started)
    with cycle_lock(folder / LOOP_DIR):
        try:
            return _steps(opts, folder, cycle, out)
        except TunesmithError as exc:
            cycle.error = str(exc)
        except Exception as exc:  # a cycle that breaks still leaves its report for the operator
            log.exception("loop cycle failed")
            cycle.error = f"{type(exc).__name__}: {exc}"
        return _finish(cycle, "error", out)


def _steps(opts: LoopOptions, folder: Path, cycle: Cycle, out: Path) -> Cycle:
    if rollout_path(folder, opts.name).exists() and ro.settle(folder, opts.name).status in ACTIVE:
        decision = ro.check(folder, opts.name, opts.log)
        cycle.rollout, cycle.gates = ro.describe(decision), decision.results
        outcome = {"waiting": "rollout_waiting", "promoted": "rollout_promoted", "rolled_back": "rollout_rolled_back"}
        return _finish(cycle, outcome.get(decision.action, "rollout_waiting"), out)  # type: ignore[arg-type]
    served = served_run(folder, opts.name, opts.recipe)
    cycle.served_run = str(served.dir)
    report, cfg = _monitor(opts, folder, served)
    cycle.drifted = [s.name for s in report.drifted]
    rows, skipped, pairs = _export(opts, folder, served, cfg)
    cycle.exported, cycle.skipped = len(rows), skipped
    rows, dropped = _screen(folder, served, rows)
    cycle.dropped, cycle.added = dropped, len(rows)
    if not rows:
        return _finish(cycle, "drift_nothing_to_learn" if cycle.drifted else "nothing_to_learn", out, report)
    return _retrain_and_roll_out(opts, folder, cycle, out, rows, pairs, report)


def _monitor(opts: LoopOptions, folder: Path, served: Any) -> tuple[Any, Any]:
    from tunesmith.monitor import traffic

    cfg = served.recipe.monitor
    updates = {k: v for k, v in (("embedder", opts.embedder), ("reward_model", opts.reward_model)) if v is not None}
    if updates:
        cfg = MonitorSection.model_validate({**cfg.model_dump(), **updates})
    return traffic.check(opts.log or folder, served, cfg), cfg


def _export(opts: LoopOptions, folder: Path, served: Any, cfg: Any) -> tuple[list[dict[str, Any]], dict[str, int], bool]:
    """The rows the log offers in the shape the served run trains on: preference pairs when its training data is
    pairs, else corrections and drifted traffic (monitor --export-retrain's rows)."""
    first = next(
        (r.obj for p in served.recipe.data.train if Path(p).is_file() for r in read_records(p) if isinstance(r.obj, dict)), None
    )
    pairs = first is not None and detect_shape(first) in PREFERENCE_SHAPES
    source = opts.log or folder
    if pairs:
        rows, skipped = feedback.pair_rows(source)
    else:
        rows, skipped, _, _ = feedback.retrain_rows(source, served, cfg)
    return rows, skipped, pairs


def _screen(folder: Path, served: Any, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows no earlier cycle tried, screened against the served run's training and eval rows."""
    tried = _tried(folder)
    fresh = [r for r, k in zip(rows, row_keys(rows)) if k not in tried]
    training, evaluation = served_data(served)
    result = screen(fresh, training, evaluation)
    dropped = dict(result.dropped)
    if len(fresh) < len(rows):
        dropped["tried by an earlier cycle"] = len(rows) - len(fresh)
    return result.kept, dropped


def _tried(folder: Path) -> set[str]:
    """Keys of the rows every earlier cycle trained on (their added.jsonl files)."""
    import json

    keys: set[str] = set()
    for added in sorted((folder / LOOP_DIR).glob("*/added.jsonl")):
        rows = [json.loads(line) for line in added.read_text(encoding="utf-8").splitlines() if line.strip()]
        keys.update(row_keys(rows))
    return keys


def _retrain_and_roll_out(
    opts: LoopOptions, folder: Path, cycle: Cycle, out: Path, rows: list[dict[str, Any]], pairs: bool, report: Any
) -> Cycle:
    out.mkdir(parents=True, exist_ok=True)
    added = write_rows(out / "added.jsonl", rows)
    cycle.added_file = str(added)
    train = load_recipe(opts.recipe, check_files=False).data.train
    keep = None if pairs else (lambda served: pin_held_out(served, train, out / "train-without-held-out.jsonl"))
    done = retrain(opts.recipe, added, folder, opts.name, force=opts.force, promote_when_passed=False, pin=keep)
    cycle.new_run, cycle.gates = str(done.new_run), done.gates
    if not all(g.passed for g in done.gates):
        return _finish(cycle, "gates_failed", out, report)
    if opts.share <= 0:
        promote(folder, opts.name, done.new_run, done.served_run, added, done.gates)
        return _finish(cycle, "promoted", out, report)
    mode: Literal["canary", "shadow"] = "shadow" if opts.shadow else "canary"
    r = ro.start(folder, opts.name, done.new_run, opts.share, mode, opts.min_requests, opts.gates, opts.reward_model)
    cycle.rollout = f"{r.mode} of {r.candidate} on {r.share:.0%} of {opts.name!r}, decided after {r.min_requests} requests"
    return _finish(cycle, "shadow_started" if opts.shadow else "canary_started", out, report)


def run_every(opts: LoopOptions, every_s: float, on_cycle: Any = None) -> None:
    """Run a cycle every `every_s` seconds (counted from each cycle's start) until interrupted."""
    while True:
        begun = time.monotonic()
        cycle = run_cycle(opts)
        if on_cycle is not None:
            on_cycle(cycle)
        time.sleep(max(0.0, every_s - (time.monotonic() - begun)))
