"""The head every method shares: the run folder (fresh or resumed), the base model path, its tokenizer, the data check."""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunesmith import models, outputs
from tunesmith.atomic import atomic_path
from tunesmith.config import Recipe, dump_recipe
from tunesmith.errors import RecipeError, RunError
from tunesmith.train import checkpoints, dist
from tunesmith.train.checkpoints import latest_complete_checkpoint

if TYPE_CHECKING:
    from tunesmith.train.method import Method

log = logging.getLogger(__name__)


@dataclass
class Start:
    started: float
    run_dir: Path
    checkpoint: Path | None  # the complete checkpoint to resume from, None for a fresh run
    base_path: str
    tokenizer: Any


# Training settings whose change mid-run would bend the learning-rate curve or the step count the
# checkpoint's scheduler was built for; a resume must use the values the run started with.
SCHEDULE = ("max_steps", "epochs", "learning_rate", "lr_scheduler", "warmup_ratio")
LOCK = ".lock"
_held: dict[Path, Any] = {}  # run folder -> this process's FileLock on it


def refuse_finished(run_dir: Path) -> None:
    """A finished run is never changed: refuse before anything is written; then claim the folder for `train`."""
    _refuse_if_finished(run_dir)
    if dist.is_main_process():
        outputs.claim_dir(run_dir, "train", reuse=True, what="output_dir")


def check_schedule(recipe: Recipe, run_dir: Path) -> None:
    """Refuse a resume whose learning-rate schedule or length differs from the run's: the LR curve would jump."""
    try:
        saved = (yaml.safe_load((run_dir / "run.yaml").read_text(encoding="utf-8")) or {}).get("training", {})
    except (OSError, yaml.YAMLError):
        return  # no recorded recipe to compare with (the checkpoint fingerprint still guards data and batch)
    now = recipe.training.model_dump(mode="json")
    diffs = [f"training.{k}: run {saved[k]!r}, recipe {now[k]!r}" for k in SCHEDULE if k in saved and saved[k] != now[k]]
    if diffs:
        raise RunError(
            "refusing to resume: the schedule changed since the run started\n  " + "\n  ".join(diffs),
            hint="Resume with the original values (the resumed learning-rate curve must continue, not jump), "
            "or start a fresh run in another output_dir.",
        )


def lock_run_dir(run_dir: Path) -> None:
    """Hold run_dir/.lock until finish_run: one writer per run folder."""
    from filelock import FileLock, Timeout

    stale = _held.pop(run_dir, None)
    if stale is not None:  # this process's own lock from a run that raised before finishing
        stale.release(force=True)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunError(
            f"another tunesmith train holds {run_dir / LOCK}: two runs writing one folder would interleave their files",
            hint="Wait for it to finish, or train into another output_dir.",
        ) from None
    _held[run_dir] = lock


def release_run_dir(run_dir: Path) -> None:
    lock = _held.pop(run_dir, None)
    if lock is not None:
        lock.release(force=True)


def prepare_run_dir(recipe: Recipe, resume: bool) -> tuple[Path, Path | None]:
    """Check, claim and lock the run folder, then write run.yaml. Every refusal happens before anything is written."""
    run_dir = recipe.run_dir
    _refuse_if_finished(run_dir)
    newest = latest_complete_checkpoint(run_dir / "checkpoints")
    if recipe.training.auto_resume and newest is not None:
        if not resume:
            log.warning("training.auto_resume: continuing from %s", newest)
        resume = True
    checkpoint = newest if resume else None
    if resume and checkpoint is None:
        raise RunError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}", hint="Start without --resume.")
    if not resume and (run_dir / "checkpoints").exists():
        raise RunError(
            f"{run_dir} holds checkpoints of an unfinished run",
            hint="Continue it with --resume, or choose another output_dir.",
        )
    if checkpoint is not None:
        checkpoints.check_resume(recipe, checkpoint)
        check_schedule(recipe, run_dir)
    # Under --nproc/--nnodes only global rank 0 claims, locks and writes run files; the others create nothing
    # (a folder they made first would race rank 0's claim of a new folder), then check_shared.
    if dist.is_main_process():
        outputs.claim_dir(run_dir, "train", reuse=resume, what="output_dir")
        lock_run_dir(run_dir)
        if not resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        with atomic_path(run_dir / "run.yaml") as tmp:
            dump_recipe(recipe, tmp)
    return run_dir, checkpoint


def check_shared(run_dir: Path) -> None:
    """Every rank of every node must see the run.yaml rank 0 has just written: one run folder for the whole run.

    Checkpoints gather every rank's part (rng_state_<rank>.pth) in one folder, a resume on every node reads that
    folder, and each rank reads the finished run back from it; on a node with its own disk at that path, training
    would run and then fail at the first of these. No-op in a single process.
    """
    if dist.world_size() == 1:
        return
    dist.join()
    dist.barrier()  # rank 0 has written run.yaml
    path = run_dir / "run.yaml"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    seen = dist.world_objects((dist.node_rank(), socket.gethostname(), digest))
    blind = sorted({(node, host) for node, host, d in seen if d != seen[0][2]})
    if blind:
        nodes = ", ".join(f"node {node} ({host})" for node, host in blind)
        raise RunError(
            f"{nodes} do(es) not see the run folder {run_dir} that rank 0 on node 0 writes: "
            "each node would train into its own folder",
            hint="Put output_dir on a filesystem every node mounts at the same path (NFS, Lustre, ...), "
            "and give every node the same recipe (docs/distributed.md).",
        )


def _refuse_if_finished(run_dir: Path) -> None:
    if (run_dir / "manifest.json").exists():
        raise RunError(
            f"{run_dir} already holds a finished run; a finished run is never changed (not even by --resume)",
            hint="Choose another output_dir (--set output_dir=...).",
        )


def begin(recipe: Recipe, method: Method[Any], resume: bool, force: bool) -> Start:
    """Run folder, base model, tokenizer; then the data audit (with the recipe's `method`'s length policy), whose
    blocking errors stop the run before any model loads."""
    from tunesmith.data import audit

    started = time.time()
    new = not recipe.run_dir.exists()
    run_dir, checkpoint = prepare_run_dir(recipe, resume)
    try:
        check_shared(run_dir)
        base_path = models.resolve_base(recipe.model.base)
        tokenizer = models.load_tokenizer(base_path, recipe.model.revision, recipe.model.trust_remote_code)
        check_target_modules(recipe, base_path)
        audit.preflight(recipe, method, tokenizer, force)
    except BaseException:
        release_run_dir(run_dir)
        if new and dist.is_main_process():  # a run refused before training leaves no folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return Start(started, run_dir, checkpoint, base_path, tokenizer)


def check_target_modules(recipe: Recipe, base_path: str) -> None:
    """Every name in adapter.target_modules must match a module of the base (checked on an empty meta-device copy,
    before any weight loads); peft would otherwise fail with a traceback or silently skip the name."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    targets, m = recipe.adapter.target_modules, recipe.model
    if recipe.adapter.type not in ("lora", "qlora", "dora") or targets == "all-linear":
        return
    config = AutoConfig.from_pretrained(base_path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=m.trust_remote_code)  # type: ignore[no-untyped-call]
    names = [n for n, _ in model.named_modules() if n]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        linear = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})
        raise RecipeError(
            [
                (
                    "adapter.target_modules",
                    f"{', '.join(unknown)} match(es) no module of {m.base}; its linear modules are {', '.join(linear)}",
                )
            ]
        )
