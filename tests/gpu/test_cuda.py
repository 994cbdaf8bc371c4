"""CUDA-only behaviour on the tiny model: bf16 training, QLoRA on the GPU, a real allocator OOM backing off,
and the sharded multi-GPU runs (FSDP, DeepSpeed ZeRO-3). Every test skips cleanly without the hardware."""

import os
import subprocess
import sys

import pytest
import torch

from tunesmith.config import load_recipe
from tunesmith.run import load_run, read_metrics
from tunesmith.train import callbacks, sft, skeleton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for a 2-process sharded run")


def _finite(run):
    return all(isinstance(r["loss"], float) for r in read_metrics(run.dir) if "loss" in r)


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="GPU without bf16")
def test_bf16_training_on_cuda(tiny_recipe):
    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 4})))
    assert run.manifest.device == "cuda" and _finite(run)
    assert run.manifest.figures.peak_memory_mb > 0


def test_qlora_on_cuda_lands_on_gpu_in_4bit(tiny_recipe, monkeypatch):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from tunesmith.train import policy

    seen = {}
    real_load = policy.load

    def spy(recipe, base_path, *args):
        model = real_load(recipe, base_path, *args)
        seen["4bit"] = any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        seen["device"] = next(model.parameters()).device.type
        return model

    monkeypatch.setattr(policy, "load", spy)
    run = sft.run(load_recipe(tiny_recipe(adapter={"type": "qlora"}, training={"max_steps": 3})))
    assert seen == {"4bit": True, "device": "cuda"}
    assert run.manifest.quantized_base and _finite(run)


class Ballast(callbacks.TrainerCallback):
    """Holds `mb_per_row` MB per row of the micro-batch during each step: a real allocation the allocator can refuse."""

    def __init__(self, mb_per_row):
        self.mb_per_row, self.held = mb_per_row, None

    def on_step_begin(self, args, state, control, **kwargs):
        rows = args.per_device_train_batch_size
        self.held = torch.empty(rows * self.mb_per_row * 2**20, dtype=torch.uint8, device="cuda")

    def on_step_end(self, args, state, control, **kwargs):
        self.held = None


def test_real_cuda_oom_backs_off(tiny_recipe, monkeypatch):
    """A per-process memory cap makes micro-batch 4 a genuine torch.OutOfMemoryError; micro-batch 2 fits."""
    torch.cuda.empty_cache()
    total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    cap_mb = 3072
    torch.cuda.set_per_process_memory_fraction(cap_mb / total_mb)
    try:
        ballast = Ballast(mb_per_row=1000)  # 4 rows: 4 GB > cap; 2 rows: 2 GB < cap
        monkeypatch.setattr(skeleton, "standard_callbacks", lambda r, d: callbacks.standard_callbacks(r, d) + [ballast])
        run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 3, "batch_size": 4})))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    f = run.manifest.faults
    assert (f.final_batch_size, f.final_grad_accum) == (2, 2)
    assert [e.batch_size for e in f.oom_backoffs] == [2]


def _launch(recipe_path, config):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "tunesmith", "train", str(recipe_path), "--nproc", "2", "--accelerate-config", config]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@two_gpus
def test_deepspeed_zero3_two_gpus_saves_a_whole_adapter(tiny_recipe, tiny_model_dir):
    pytest.importorskip("deepspeed")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = tiny_recipe(training={"max_steps": 4, "batch_size": 2})
    res = _launch(path, "deepspeed_zero3")
    assert res.returncode == 0, res.stderr[-4000:]
    run = load_run(load_recipe(path).run_dir)
    assert run.manifest.figures.world_size == 2
    base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert run.manifest.figures.total_params > base_params  # the whole model + LoRA, not a rank's empty ZeRO-3 shard
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_varlen_attention_matches_the_block_mask_on_cuda(tiny_recipe):
    """speed.attention=varlen on CUDA in bf16 (auto picks the mask there until this is measured): same loss curve."""
    losses = {}
    for name in ("mask", "varlen"):
        run = sft.run(
            load_recipe(tiny_recipe(speed={"attention": name}, training={"max_steps": 4}, output_dir=f"runs/att-{name}"))
        )
        assert run.manifest.speed.attention == name and run.manifest.device == "cuda"
        losses[name] = [r["loss"] for r in read_metrics(run.dir) if "loss" in r and "eval_loss" not in r]
    assert len(losses["mask"]) == len(losses["varlen"]) == 4
    assert max(abs(a - b) / a for a, b in zip(losses["mask"], losses["varlen"])) < 0.02


def test_liger_keeps_the_loss_curve(tiny_recipe, monkeypatch):
    """speed.liger: Liger's RMSNorm, SwiGLU and RoPE kernels really patch the model, and the bf16 loss curve stays
    within 3% of the same run without them."""
    pytest.importorskip("liger_kernel", reason="needs the optional liger-kernel package (pip install 'tunesmith[liger]')")
    import transformers.trainer

    applied = []
    real = transformers.trainer.apply_liger_kernel
    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel", lambda *a, **k: applied.append(1) or real(*a, **k))

    def losses(name, liger):
        recipe = tiny_recipe(speed={"liger": liger}, training={"max_steps": 6, "learning_rate": 1e-3}, output_dir=f"run-{name}")
        run = sft.run(load_recipe(recipe))
        return [m["loss"] for m in read_metrics(run.dir) if "loss" in m and "eval_loss" not in m], run

    plain, _ = losses("plain", False)
    assert not applied
    fused, run = losses("liger", True)
    assert applied and run.manifest.speed.liger is True
    assert len(plain) == len(fused) == 6
    assert max(abs(a - b) / a for a, b in zip(plain, fused)) < 0.03
