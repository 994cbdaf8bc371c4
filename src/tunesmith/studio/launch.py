"""Launching `tunesmith train` from the studio: the recipe file, the subprocess, its job record, stop and resume.

A job record (`Job`, pydantic, schema_version) lives in the studio's own folder (<first root>/.studio/jobs/),
never inside the run folder, which `train` alone writes. Stopping sends SIGTERM: train saves a
checkpoint and exits 75; resuming starts `tunesmith train RECIPE --resume` on the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.atomic import open_new, write_text_atomic
from tunesmith.config import Recipe, recipe_from_dict
from tunesmith.errors import RecipeError, RunError
from tunesmith.outputs import claim_dir
from tunesmith.studio.confine import check_launch

JOB_VERSION = 1
POLL_S = 0.5
GONE_GRACE_S = 3.0


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = JOB_VERSION
    run_dir: str
    recipe: str
    cmd: list[str]
    pid: int
    log: str
    started: float = Field(default_factory=time.time, description="Unix time (s).")
    exit_code: int | None = None
    ended: float | None = None


def _job_path(studio_dir: Path, run_dir: Path) -> Path:
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return studio_dir / "jobs" / f"{digest}.json"


def read_job(studio_dir: Path, run_dir: Path) -> dict[str, object] | None:
    path = _job_path(studio_dir, run_dir)
    if not path.exists():
        return None
    try:
        return Job.model_validate_json(path.read_text(encoding="utf-8")).model_dump()
    except (OSError, ValueError):
        return None


def _write_job(studio_dir: Path, job: Job) -> None:
    write_text_atomic(_job_path(studio_dir, Path(job.run_dir)), job.model_dump_json(indent=2))


def pid_alive(pid: object) -> bool:
    """Whether process `pid` is running (a zombie, exited but not yet reaped, is not)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child (exited, not yet reaped) is not running
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True


def validate_recipe(text: str, recipes_dir: Path, files: list[Path], models: list[Path]) -> Recipe:
    """Parse and validate a recipe edited in the studio. Everything it points at must lie inside the studio's folders
    (`files`: --runs and --data; base models also in `models`) and it may not run code from the form
    (`confine.check_launch`), checked before validation opens any file it names."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RecipeError([("(yaml)", str(exc))]) from None
    if not isinstance(data, dict):
        raise RecipeError([("(recipe)", "the top level must be a mapping of sections")])
    check_launch(data, recipes_dir, files, models)
    return recipe_from_dict(data, recipes_dir)


class Launcher:
    """Starts and stops training subprocesses; one job record per run folder."""

    def __init__(self, studio_dir: Path) -> None:
        self.studio_dir = claim_dir(studio_dir, "studio", reuse=True, what="studio folder")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.command = [sys.executable, "-m", "tunesmith", "train"]  # + RECIPE [--resume]

    def save_recipe(self, text: str, recipe: Recipe) -> Path:
        """Write the edited recipe into a new file under .studio/recipes/ (never over an existing one)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.studio_dir / "recipes" / f"{Path(recipe.output_dir).name}-{stamp}.yaml"
        if path.exists():
            raise RunError(f"{path} already exists; try again in a second")
        write_text_atomic(path, text)
        return path

    def start(self, recipe_path: Path, run_dir: Path, resume: bool = False) -> Job:
        key = str(Path(run_dir).resolve())
        old = self.procs.get(key)
        if old is not None and old.poll() is None:
            raise RunError(f"{run_dir.name} is already training (pid {old.pid})")
        log, fh = self._new_log(run_dir)
        cmd = [*self.command, str(recipe_path)] + ["--resume"] * resume
        env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
        with fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[key] = proc
        job = Job(run_dir=key, recipe=str(recipe_path), cmd=cmd, pid=proc.pid, log=str(log))
        _write_job(self.studio_dir, job)
        threading.Thread(target=self._wait, args=(proc, job), daemon=True, name="tunesmith-train-wait").start()
        return job

    def _wait(self, proc: subprocess.Popen[bytes], job: Job) -> None:
        job.exit_code = proc.wait()
        job.ended = time.time()
        _write_job(self.studio_dir, job)

    def stop(self, run_dir: Path) -> bool:
        """SIGTERM the run's training process (it saves a checkpoint and exits 75); False when none is running."""
        proc = self.procs.get(str(Path(run_dir).resolve()))
        if proc is not None:
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGTERM)
            return True
        job = read_job(self.studio_dir, run_dir)  # started by an earlier studio session
        if job is None or job.get("exit_code") is not None or not pid_alive(job.get("pid")):
            return False
        os.kill(int(str(job["pid"])), signal.SIGTERM)
        return True

    def _new_log(self, run_dir: Path) -> tuple[Path, IO[Any]]:
        """A new log file for a start (a start within the second of the previous one gets the next free name);
        created, never a link planted under that name."""
        folder = self.studio_dir / "jobs"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{_job_path(self.studio_dir, run_dir).stem}-{int(time.time())}"
        for n in range(1000):
            log = folder / f"{stem}{f'-{n}' if n else ''}.log"
            try:
                return log, open_new(log)
            except FileExistsError:
                continue
        raise RunError(f"no free log name for {run_dir.name} in {folder}", hint="Remove old logs from that folder.")

    def resume(self, run_dir: Path) -> Job:
        job = read_job(self.studio_dir, run_dir)
        if job is None:
            raise RunError(
                f"{run_dir.name} was not started from the studio", hint="Resume it with: tunesmith train RECIPE --resume"
            )
        return self.start(Path(str(job["recipe"])), run_dir, resume=True)


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def follow(studio_dir: Path, run_dir: Path, timeout_s: float = 3600.0) -> Iterator[str]:
    """Server-sent events for a launched run: `metrics` rows, `log` lines, then one `status` with the exit code."""
    sent_metrics, sent_log, gone = 0, 0, 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = read_job(studio_dir, run_dir)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            lines = [ln for ln in metrics.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for line in lines[sent_metrics:]:
                yield _sse("metrics", json.loads(line))
            sent_metrics = len(lines)
        if job is not None and Path(str(job["log"])).exists():
            text = Path(str(job["log"])).read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
            lines = [ln for ln in text.splitlines() if ln.strip()]
            for line in lines[sent_log:]:
                yield _sse("log", line[-300:])
            sent_log = len(lines)
        # No exit code and no process for a while: started by an earlier studio session that is gone, so nobody
        # will record one (the grace covers the moment between the exit and the waiter writing the code).
        gone = gone + 1 if job is not None and job.get("exit_code") is None and not pid_alive(job.get("pid")) else 0
        if job is not None and (job.get("exit_code") is not None or gone * POLL_S >= GONE_GRACE_S):
            yield _sse("status", {"exit_code": job.get("exit_code"), "finished": (run_dir / "manifest.json").exists()})
            return
        yield ": keep-alive\n\n"
        time.sleep(POLL_S)
