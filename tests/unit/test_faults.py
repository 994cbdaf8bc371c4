"""Runs that survive faults, on the tiny model: SIGKILL + resume, SIGTERM, NaN steps, OOM back-off, disk full."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tunesmith.config import load_recipe
from tunesmith.errors import RunError
from tunesmith.run import read_metrics
from tunesmith.train import callbacks, faults, sft, skeleton
from tunesmith.train.callbacks import COMPLETE, STAGING, latest_complete_checkpoint

# Runs the real CLI with a pause after every optimizer step, so a test can signal it mid-training.
# The pause changes no number: it only sleeps.
SLOW_CLI = """
import sys, time
from transformers import TrainerCallback
from tunesmith.train import callbacks

PAUSE = float(sys.argv[1])

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(PAUSE)

original = callbacks.standard_callbacks
callbacks.standard_callbacks = lambda recipe, run_dir: original(recipe, run_dir) + [Slow()]
from tunesmith.cli import app
sys.argv = ["tunesmith", *sys.argv[2:]]
app()
"""


def _start_slow(recipe_path, pause=0.4, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, str(pause), "train", str(recipe_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path, proc, timeout=180):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before {path} appeared:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path} never appeared")
        time.sleep(0.05)


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def _assert_same_run(run_dir, ref_dir):
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == sorted(set(steps)), "a step was logged twice"
    ref, got = _losses(ref_dir), _losses(run_dir)
    assert list(got) == list(ref)
    assert list(got.values()) == pytest.approx(list(ref.values()), rel=1e-4)
    ref_w = _adapter(ref_dir)
    for key, value in _adapter(run_dir).items():
        assert torch.allclose(value, ref_w[key], atol=1e-6), key


RECIPE = dict(training={"max_steps": 8, "save_steps": 2, "save_total_limit": 10, "logging_steps": 1})


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tiny_recipe):
    path = tiny_recipe(**RECIPE)
    proc = _start_slow(path)
    run_dir = load_recipe(path).run_dir
    _wait_for(run_dir / "checkpoints" / "checkpoint-4" / COMPLETE, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "manifest.json").exists()
    assert latest_complete_checkpoint(run_dir / "checkpoints").name in ("checkpoint-4", "checkpoint-6")

    resumed = sft.run(load_recipe(path), resume=True)
    ref = sft.run(load_recipe(path, ["output_dir=runs/ref"]))
    assert resumed.manifest.figures.global_step == 8
    _assert_same_run(resumed.dir, ref.dir)
    assert any(r.get("event") == "resumed" for r in read_metrics(resumed.dir))


def test_sigterm_finishes_step_saves_and_exits_75_then_auto_resume(tiny_recipe):
    path = tiny_recipe(**RECIPE)
    run_dir = load_recipe(path).run_dir
    proc = _start_slow(path)
    _wait_for(run_dir / "checkpoints" / "checkpoint-2" / COMPLETE, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == faults.TrainingInterrupted.exit_code == 75, err[-3000:]
    assert "SIGTERM received: stopped after step" in err and "--resume" in err
    stopped = latest_complete_checkpoint(run_dir / "checkpoints")
    assert stopped is not None and 2 <= int(stopped.name.split("-")[1]) < 8
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "checkpoints" / STAGING).exists()
    assert (run_dir / "loss.png").exists()  # even a stopped run has its curve

    run = sft.run(load_recipe(path, ["training.auto_resume=true"]))  # no --resume: the recipe asks for it
    assert run.manifest.resumed_from == str(stopped) and run.manifest.figures.global_step == 8


def test_resume_refuses_a_changed_seed_or_batch(tiny_recipe):
    path = tiny_recipe(training={"max_steps": 2, "save_steps": 2})
    run = sft.run(load_recipe(path))
    (run.dir / "manifest.json").unlink()
    with pytest.raises(RunError, match=r"refusing to resume checkpoint-2(.|\n)*seed: checkpoint 42, recipe 7"):
        sft.run(load_recipe(path, ["training.seed=7"]), resume=True)
    with pytest.raises(RunError, match="batch_size: checkpoint 4, recipe 2"):
        sft.run(load_recipe(path, ["training.batch_size=2"]), resume=True)


def test_partial_checkpoints_and_staging_are_never_resumed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step, marked in ((2, True), (4, True), (6, False)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        if marked:
            (ckpts / f"checkpoint-{step}" / COMPLETE).write_text("{}")
    (ckpts / STAGING / "checkpoint-8").mkdir(parents=True)
    (ckpts / STAGING / "checkpoint-8" / COMPLETE).write_text("{}")
    assert latest_complete_checkpoint(ckpts).name == "checkpoint-4"


class Poison(TrainerCallback):
    """Test-only: make the loss NaN on the given optimizer steps (as a broken batch would)."""

    def __init__(self, steps):
        self.steps, self.active = set(steps), False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, inputs, output):  # NaN embeddings: the loss is NaN whatever way the trainer computes it
            return output * float("nan") if self.active else None

        model.get_input_embeddings().register_forward_hook(hook)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 in self.steps

    def on_step_end(self, args, state, control, **kwargs):
        self.active = False


def _with(monkeypatch, *extra):
    monkeypatch.setattr(skeleton, "standard_callbacks", lambda r, d: callbacks.standard_callbacks(r, d) + list(extra))


def test_nan_step_is_skipped_counted_and_visible(tiny_recipe, monkeypatch):
    _with(monkeypatch, Poison({2}))
    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 4, "logging_steps": 1})))
    rows = [r for r in read_metrics(run.dir) if "loss" in r]
    assert rows[1]["loss"] == "nan"  # never hidden or smoothed over
    assert rows[1]["skipped_nonfinite_steps"] == 1 and rows[3]["skipped_nonfinite_steps"] == 1
    assert all(isinstance(r["loss"], float) for i, r in enumerate(rows) if i != 1)
    assert run.manifest.faults.skipped_nonfinite_steps == [2]
    assert all(torch.isfinite(w).all() for w in _adapter(run.dir).values())


def test_nan_steps_in_a_row_abort_and_keep_last_good_checkpoint(tiny_recipe, monkeypatch):
    _with(monkeypatch, Poison(range(3, 100)))
    path = tiny_recipe(training={"max_steps": 8, "save_steps": 2, "max_bad_steps": 3})
    with pytest.raises(faults.TrainingDiverged, match="stopped at step 5: 3 steps in a row") as info:
        sft.run(load_recipe(path))
    assert info.value.exit_code == 3 and "checkpoint-4" in info.value.hint
    run_dir = load_recipe(path).run_dir
    assert latest_complete_checkpoint(run_dir / "checkpoints").name == "checkpoint-4"
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "adapter").exists()
    assert [r["loss"] for r in read_metrics(run_dir) if "loss" in r][2:] == ["nan"] * 3


class FakeOOM(TrainerCallback):
    """Test-only: the device 'runs out of memory' above a micro-batch size, like a CUDA OOM would."""

    def __init__(self, fits):
        self.fits, self.raised = fits, 0

    def on_step_begin(self, args, state, control, **kwargs):
        if args.per_device_train_batch_size > self.fits:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_oom_halves_micro_batch_keeps_global_batch(tiny_recipe, monkeypatch):
    # fp32: the comparison below is up to float summation order, which bf16 rounding would swamp.
    path = tiny_recipe(training={"max_steps": 3, "batch_size": 4}, speed={"precision": "fp32"})
    ref = sft.run(load_recipe(path, ["output_dir=runs/ref"]))
    oom = FakeOOM(fits=1)
    _with(monkeypatch, oom)
    run = sft.run(load_recipe(path))
    f = run.manifest.faults
    assert oom.raised == 2 and (f.final_batch_size, f.final_grad_accum) == (1, 4)
    assert [(e.batch_size, e.grad_accum) for e in f.oom_backoffs] == [(2, 2), (1, 4)]
    assert [r["batch_size"] for r in read_metrics(run.dir) if r.get("event") == "oom_backoff"] == [2, 1]
    # Same global batch, same samples per step: the same training up to float summation order.
    ref_w = _adapter(ref.dir)
    for key, value in _adapter(run.dir).items():
        assert torch.allclose(value, ref_w[key], atol=1e-4), key


def test_oom_at_micro_batch_one_is_a_clear_error(tiny_recipe, monkeypatch):
    _with(monkeypatch, FakeOOM(fits=0))
    with pytest.raises(faults.OutOfMemory, match="out of memory at micro-batch 1 \\(grad_accum 4\\)") as info:
        sft.run(load_recipe(tiny_recipe(training={"max_steps": 2, "batch_size": 4})))
    assert info.value.exit_code == 4 and "gradient_checkpointing" in info.value.hint


def test_smaller_batch_keeps_the_product():
    assert [faults._smaller_batch(b) for b in (2, 3, 4, 6, 8, 12)] == [1, 1, 2, 3, 4, 6]


def test_disk_full_while_saving_keeps_previous_checkpoint(tiny_recipe, monkeypatch):
    path = tiny_recipe(training={"max_steps": 6, "save_steps": 2})
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(faults.DiskFull, match="disk full .* at step 4") as info:
        sft.run(load_recipe(path))
    assert info.value.exit_code == 74 and "checkpoint-2" in info.value.hint
    ckpts = load_recipe(path).run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]  # no partial checkpoint-4, no staging
    assert json.loads((ckpts / "checkpoint-2" / COMPLETE).read_text())["step"] == 2
    torch.load(ckpts / "checkpoint-2" / "optimizer.pt", weights_only=True)  # intact

    monkeypatch.setattr(torch, "save", real_save)
    run = sft.run(load_recipe(path), resume=True)
    assert run.manifest.figures.global_step == 6


def test_disk_full_while_saving_final_adapter_leaves_no_partial_adapter(tiny_recipe, monkeypatch):
    import peft.peft_model

    path = tiny_recipe(training={"max_steps": 4, "save_steps": 2})
    real = peft.peft_model.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if ".adapter.tmp" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_disk)
    with pytest.raises(faults.DiskFull, match="final adapter") as info:
        sft.run(load_recipe(path))
    run_dir = load_recipe(path).run_dir
    assert info.value.exit_code == 74 and "checkpoint-4" in info.value.hint
    assert not (run_dir / "adapter").exists() and not (run_dir / ".adapter.tmp").exists()
    assert not (run_dir / "manifest.json").exists()  # not recorded as finished

    monkeypatch.setattr(peft.peft_model, "safe_save_file", real)
    run = sft.run(load_recipe(path), resume=True)
    assert run.manifest.figures.global_step == 4 and (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_train_dependencies_point_one_way():
    """dist ← checkpoints ← callbacks ← faults: no module imports one above it, not even inside a function."""
    import ast
    from pathlib import Path

    layers = ["dist", "checkpoints", "callbacks", "faults"]
    root = Path(faults.__file__).parent
    for i, name in enumerate(layers):
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.removeprefix("tunesmith.train.").removeprefix("tunesmith.train"))
                if node.module == "tunesmith.train":
                    imported.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name.removeprefix("tunesmith.train.") for a in node.names)
        above = imported & set(layers[i + 1 :])
        assert not above, f"train/{name}.py imports {above}, which sit above it"
