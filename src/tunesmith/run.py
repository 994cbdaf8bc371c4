"""The run directory: everything after `train` reads what it needs from here.

Layout: run.yaml (resolved recipe) · manifest.json (versions, hashes, figures) ·
adapter/ · checkpoints/ · metrics.jsonl · loss.png · eval/ · data/eval.jsonl (the held-out rows) ·
.tunesmith (marker: train made this folder) · .lock (held while training)

A finished run is self-contained: reading it validates the schema only (its data may have moved), and the
held-out rows come from its own data/eval.jsonl, verified against the manifest's SHA-256.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunesmith import method_details  # noqa: F401  # registers each built-in method's details record, which manifests hold
from tunesmith.atomic import write_text_atomic
from tunesmith.config import Recipe, recipe_from_dict
from tunesmith.data.formats import Example
from tunesmith.errors import RunError
from tunesmith.models import sha256_file
from tunesmith.records import Manifest, read_manifest

if TYPE_CHECKING:
    from tunesmith.train.method import Method

HELD_OUT = "data/eval.jsonl"  # inside the run folder
LIBRARIES = ("tunesmith", "torch", "transformers", "peft", "trl", "datasets", "accelerate")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file + rename so a crash never leaves a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def read_json_record(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object tunesmith or peft wrote beside a model; RunError naming the file when it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RunError(f"{path} is not a readable {what}: {exc}", hint=f"It was damaged after it was written: {fix}.") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a readable {what}: a JSON object was expected", hint=f"{fix[0].upper()}{fix[1:]}.")
    return data


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
        raise RunError(
            f"{run_dir} has no manifest.json: training did not finish", hint="Resume it: tunesmith train RECIPE --resume"
        )
    try:
        data = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RunError(f"{recipe_file} is not readable YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RunError(f"{recipe_file} does not hold a recipe")
    # Schema only: a finished run must load after its data moved or on a machine without the training extras.
    recipe = recipe_from_dict(data, run_dir, source=str(recipe_file), check_files=False)
    return Run(run_dir, recipe, read_manifest(manifest_file))


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    """A saved held-out row's other fields (graders read them as item.<field>) and its tool list (the prompt renders it)."""
    return {**(row.get("fields") or {}), **({"tools": row["tools"]} if "tools" in row else {})}


def read_held_out(path: Path) -> list[Any]:
    """The examples of a held-out file (data/eval.jsonl: one {id, messages, source, fields} per line; `fields`, the
    row's other fields, becomes Example.extra)."""
    if not path.exists():
        raise RunError(f"{path} is missing: the run's held-out rows were removed", hint="Restore the run folder from a copy.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Example(r["id"], r["messages"], r.get("source", f"{path}:{i + 1}"), _extra(r)) for i, r in enumerate(rows)]


def held_out_examples(run: Run, method: Method[Any]) -> list[Example]:
    """THE held-out set of a run: its own data/eval.jsonl, the eval side of the split it trained on. eval, the ladder,
    checkpoint selection, retrain, serve --check and the studio all score on these rows and no others.

    A run written before the copy existed is recomputed by its `method` (the run's own, Method.eval_examples) only
    when its recipe names an eval file (the split cannot have changed); a held-out fraction it cannot reproduce
    exactly is refused rather than guessed. train/methods.py's `held_out_examples` finds the method by its name.
    """
    held = run.manifest.held_out
    if held is not None:
        return read_held_out(run.dir / held.path)
    if run.recipe.data.eval is None:
        raise RunError(
            f"{run.dir} predates saved held-out rows and held out data.eval_fraction of its training data: "
            "the rows it did not train on cannot be recovered exactly",
            hint="Retrain it with this version of tunesmith, or give the recipe a separate data.eval file.",
        )
    return method.eval_examples(run.recipe)


def eval_sources(run: Run) -> list[str]:
    """The data files the held-out rows came from: the eval file, or the train files eval_fraction was taken from."""
    d = run.recipe.data
    return [d.eval] if d.eval else list(d.train)


def changed_inputs(run: Run) -> list[str]:
    """Warnings for eval inputs that differ from the SHA-256 the manifest recorded (gates fail on any).

    The run's own held-out copy must match; a source data file that still exists must match too (a missing one is
    fine: the run's copy is used). Empty when everything matches.
    """
    warnings = []
    held = run.manifest.held_out
    if held is not None and (path := run.dir / held.path).exists() and sha256_file(path) != held.sha256:
        warnings.append(f"{path} changed since training (SHA-256 differs from the manifest): the held-out rows were edited")
    for src in eval_sources(run):
        recorded = run.manifest.data.get(src)
        if recorded and Path(src).is_file() and sha256_file(Path(src)) != recorded:
            used = "the run's own copy of the held-out rows is used" if held else "eval reads the changed file"
            warnings.append(f"{src} changed since training (SHA-256 differs from the manifest); {used}")
    return warnings


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.yaml").exists()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl (step, loss, learning_rate, eval_loss, ...)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
