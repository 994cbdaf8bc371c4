"""The studio's view of run folders: discovery under the given roots, status, safe path resolution, cached reads.

Every file the studio reads through a URL goes through `Roots.resolve`, which refuses anything that
does not stay inside one of the folders given on the command line (`..`, encoded or not, absolute
paths, symlinks pointing out). Reads of run records are cached by file mtime so a page with 200 runs
or a 5,000-example report stays fast.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith import method_details  # noqa: F401  # the methods' manifest records, which read_manifest needs
from tunesmith.errors import RunError
from tunesmith.eval.metrics import primary_metrics
from tunesmith.records import EvalReport, Manifest, read_eval_report, read_manifest
from tunesmith.studio.launch import pid_alive, read_job

STUDIO_DIR = ".studio"  # the studio's own files (launch jobs, recipes) inside the first root
SKIP_DIRS = {STUDIO_DIR, "checkpoints", "adapter", "eval", "review", ".git", "__pycache__", "node_modules"}
RUNNING_WINDOW_S = 120  # a run whose metrics.jsonl changed this recently (and has a live job) counts as running


class Roots:
    """The folders the studio may read; `resolve` maps a URL path to a file inside one of them, or refuses."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = [Path(d).expanduser().resolve() for d in dirs]

    def resolve(self, key: str) -> Path:
        """`key` is `<root index>/<relative path>`; raises RunError for anything outside the roots."""
        head, _, rel = key.partition("/")
        if not head.isdigit() or int(head) >= len(self.dirs):
            raise RunError(f"unknown folder {key!r}")
        root = self.dirs[int(head)]
        if rel.startswith(("/", "\\", "~")) or "\x00" in rel:
            raise RunError("absolute paths are not served")
        path = (root / rel).resolve()
        if path != root and not path.is_relative_to(root):
            raise RunError("path outside the studio's folders")
        return path

    def key(self, path: Path) -> str:
        path = Path(path).resolve()
        for i, root in enumerate(self.dirs):
            if path == root or path.is_relative_to(root):
                rel = path.relative_to(root).as_posix()
                return f"{i}/{rel}" if rel != "." else f"{i}/"
        raise RunError(f"{path} is not under the studio's folders")

    @property
    def studio_dir(self) -> Path:
        return self.dirs[0] / STUDIO_DIR


@dataclass
class RunSummary:
    """One row of the runs table."""

    key: str
    name: str
    dir: Path
    status: str  # running | finished | failed | stopped | unreadable
    method: str = "?"
    adapter: str = "?"
    base: str = "?"
    data_hash: str = ""
    steps: int = 0
    manifest: Manifest | None = None
    report: EvalReport | None = None
    figures: dict[str, float] = field(default_factory=dict)
    mtime: float = 0.0
    problem: str | None = None  # why a record of the run cannot be read (status unreadable)


_cache: dict[tuple[str, str], tuple[float, Any]] = {}


def cached(path: Path, kind: str, loader: Any) -> Any:
    """`loader(path)` memoised on the file's mtime (None when the file is missing)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    hit = _cache.get((str(path), kind))
    if hit is not None and hit[0] == mtime:
        return hit[1]
    value = loader(path)
    _cache[(str(path), kind)] = (mtime, value)
    return value


def _yaml(path: Path) -> dict[str, Any]:
    """A run.yaml as a mapping; RunError saying why when it is not one (bad YAML, not UTF-8, a list...)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunError(
            f"{path.name} is not readable YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if not isinstance(data, dict):
        raise RunError(f"{path.name} is not a mapping of recipe sections")
    return data


def find_runs(roots: Roots, max_depth: int = 4) -> list[Path]:
    """Every folder holding a run.yaml under the roots (not descending into a run's own subfolders)."""
    found: list[Path] = []
    for root in roots.dirs:
        for cur, dirs, files in os.walk(root):
            depth = len(Path(cur).relative_to(root).parts)
            if "run.yaml" in files:
                found.append(Path(cur))
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")) if depth < max_depth else []
    return found


def job_state(run_dir: Path, roots: Roots) -> dict[str, Any] | None:
    """The studio's launch record for this run, if the studio started it (pid, exit code)."""
    return read_job(roots.studio_dir, run_dir)


def run_status(run_dir: Path, roots: Roots) -> str:
    """finished (manifest.json) · running (a live process) · stopped (exit 75 or checkpoints left) · failed."""
    if (run_dir / "manifest.json").exists():
        return "finished"
    job = job_state(run_dir, roots)
    if job is not None:
        if job.get("exit_code") is None and pid_alive(job.get("pid")):
            return "running"
        if job.get("exit_code") == 75:
            return "stopped"
        if job.get("exit_code") not in (None, 0):
            return "failed"
    metrics = run_dir / "metrics.jsonl"
    if job is None and metrics.exists() and time.time() - metrics.stat().st_mtime < RUNNING_WINDOW_S:
        return "running"  # started outside the studio and still logging
    return "stopped" if any((run_dir / "checkpoints").glob("checkpoint-*")) else "failed"


def summarize(run_dir: Path, roots: Roots) -> RunSummary:
    """What the runs table shows for one folder; a record that cannot be read makes the run `unreadable`, with the
    reason in `problem`, never an error page."""
    s = RunSummary(roots.key(run_dir), run_dir.name, run_dir, run_status(run_dir, roots))
    try:
        s.mtime = (run_dir / "run.yaml").stat().st_mtime
        s.manifest = cached(run_dir / "manifest.json", "manifest", read_manifest)
        s.report = cached(run_dir / "eval" / "report.json", "report", read_eval_report)
    except (RunError, OSError) as exc:
        s.status, s.problem = "unreadable", getattr(exc, "message", str(exc))
    if s.manifest is not None:
        m = s.manifest
        s.name, s.method, s.adapter, s.base = m.run, m.method, m.adapter, m.base_model.spec
        s.data_hash = next(iter(m.data.values()), "")[:12]
        s.steps = m.figures.global_step
    else:
        try:
            recipe = cached(run_dir / "run.yaml", "yaml", _yaml) or {}
        except RunError as exc:
            recipe, s.status, s.problem = {}, "unreadable", s.problem or exc.message
        s.name = str(recipe.get("name", run_dir.name))
        s.method = str(recipe.get("method", "sft"))
        s.adapter = str(_section(recipe, "adapter").get("type", "lora"))
        s.base = str(_section(recipe, "model").get("base", "?"))
    if s.report is not None:
        s.figures = {k: v for k, v in s.report.summary.get("tuned", {}).items() if k in key_metrics(s.report)}
        s.figures["win_rate"] = s.report.judgement.win_rate
    return s


def _section(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    value = recipe.get(name)
    return value if isinstance(value, dict) else {}


def key_metrics(report: EvalReport) -> list[str]:

    return list(primary_metrics(report.json_mode, report.tool_mode))[:2]


def list_runs(roots: Roots) -> list[RunSummary]:
    """Every run under the roots, newest first."""
    return sorted((summarize(d, roots) for d in find_runs(roots)), key=lambda s: -s.mtime)


def prediction_lines(run_dir: Path) -> list[str]:
    """The raw lines of eval/predictions.jsonl (cached): a page parses only the rows it shows."""

    def load(path: Path) -> list[str]:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    return cached(run_dir / "eval" / "predictions.jsonl", "lines", load) or []


def predictions(run_dir: Path) -> list[dict[str, Any]]:
    """eval/predictions.jsonl rows (id, prompt, reference, base, tuned, *_metrics, judgement); cached."""
    return (
        cached(
            run_dir / "eval" / "predictions.jsonl",
            "predictions",
            lambda _p: [prediction_row(line, n) for n, line in enumerate(prediction_lines(run_dir), 1)],
        )
        or []
    )


def prediction_row(line: str, n: int) -> dict[str, Any]:
    """Row `n` (1-based, blank lines not counted) of eval/predictions.jsonl; RunError when it is not a JSON object."""
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    if not isinstance(row, dict):
        raise RunError(f"eval/predictions.jsonl row {n} is not a JSON object", hint="Run `tunesmith eval` again to rewrite it.")
    return row


def metric_rows(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The readable rows of metrics.jsonl, and a sentence counting the lines that are not JSON objects (None when all are)."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return [], None
    rows, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(n)
    return rows, (f"metrics.jsonl: {len(bad)} unreadable line(s) skipped (first: line {bad[0]})" if bad else None)


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Checkpoint folders with their step ("?" when the name has none) and size (MB), by step."""

    def step(ck: Path) -> int:
        tail = ck.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    out = []
    for ck in sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda ck: (step(ck), ck.name)):
        size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
        out.append({"name": ck.name, "step": step(ck) if step(ck) >= 0 else "?", "mb": round(size / 2**20, 1)})
    return out


def faults(metrics: list[dict[str, Any]], manifest: Manifest | None) -> list[dict[str, Any]]:
    """NaN/inf steps, OOM back-offs and resumes, from metrics.jsonl events and the manifest's fault summary."""
    rows = [r for r in metrics if isinstance(r, dict)]
    out = [dict(r) for r in rows if r.get("event")]
    out += [
        {"event": "nonfinite_loss", "step": r.get("step")}
        for r in rows
        if isinstance(r.get("loss"), str) and r["loss"].lower() in ("nan", "inf", "-inf")
    ]
    if manifest is not None:
        skipped = manifest.faults.skipped_nonfinite_steps
        out += [{"event": "skipped_nonfinite_step", "step": s} for s in skipped]
        if manifest.resumed_from and not any(r.get("event") == "resumed" for r in out):
            out.append({"event": "resumed", "checkpoint": manifest.resumed_from})
    return out
