"""The run directory: everything after `train` reads what it needs from here.

Layout: run.yaml (resolved recipe) · manifest.json (versions, hashes, figures) ·
adapter/ · checkpoints/ · metrics.jsonl · loss.png · eval/
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tunesmith.atomic import write_text_atomic
from tunesmith.config import Recipe, recipe_from_dict
from tunesmith.errors import RunError
from tunesmith.records import Manifest, read_manifest

LIBRARIES = ("tunesmith", "torch", "transformers", "peft", "trl", "datasets", "accelerate")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file + rename so a crash never leaves a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_sha(cwd: Path | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else the process max RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


@dataclass
class Run:
    """A finished (or in-progress) run read back from its folder."""

    dir: Path
    recipe: Recipe
    manifest: Manifest

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    @property
    def base_path(self) -> str:
        return self.manifest.base_model.path

    @property
    def template_hash(self) -> str:
        return self.manifest.chat_template_sha256


def load_run(path: str | Path) -> Run:
    """Read a run folder back (run.yaml + manifest.json)."""
    run_dir = Path(path).resolve()
    recipe_file, manifest_file = run_dir / "run.yaml", run_dir / "manifest.json"
    if not recipe_file.exists():
        raise RunError(f"{run_dir} is not a run folder (no run.yaml)", hint="Pass the output_dir of a `tunesmith train` run.")
    if not manifest_file.exists():
        raise RunError(f"{run_dir} has no manifest.json: training did not finish", hint="Resume it: tunesmith train RECIPE --resume")
    data = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    recipe = recipe_from_dict(data, run_dir, source=str(recipe_file))
    return Run(run_dir, recipe, read_manifest(manifest_file))


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.yaml").exists()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl (step, loss, learning_rate, eval_loss, ...)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
