"""Two CPU processes (gloo DDP) through `tunesmith train --nproc 2`: both ranks train, only rank 0 writes.

FSDP and DeepSpeed need GPUs (see test_fsdp_on_cpu_is_refused); their 2-GPU runs are in tests/gpu/.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from transformers import AutoModelForCausalLM

from tunesmith.config import load_recipe
from tunesmith.run import load_run
from tunesmith.train import faults, launch, start
from tunesmith.train.callbacks import COMPLETE


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_shipped_accelerate_configs_are_valid(name):
    config = load_config_from_file(str(launch.config_path(name)))
    assert config.distributed_type.value in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    cmd = launch.command(launch.Topology(nproc=4), launch.config_path(name), ["train", "r.yaml"], Path("report"))
    assert cmd[1:4] == ["-m", "tunesmith.train.launch", "report"] and cmd[-4:] == ["-m", "tunesmith", "train", "r.yaml"]


def test_two_processes_train_and_rank0_writes(tiny_recipe, tiny_model_dir):
    # 24 rows, micro-batch 2: one process takes 12 steps for an epoch, two processes take 6.
    path = tiny_recipe(training={"max_steps": -1, "epochs": 1, "batch_size": 2, "save_steps": 3})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    run = load_run(load_recipe(path).run_dir)
    f = run.manifest.figures
    assert f.global_step == 6  # the data was split between two ranks
    # Figures count both ranks: 6 steps x 2 rows x 2 ranks = every train token once in the epoch.
    assert f.world_size == 2
    assert f.tokens_per_s * f.train_runtime_s == pytest.approx(run.manifest.tokens.train.tokens, rel=0.1)
    assert f.total_params > f.trainable_params > 0
    ckpt = run.dir / "checkpoints" / "checkpoint-6"
    assert (ckpt / COMPLETE).exists()
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()  # both ranks saved, then one renamed
    assert not (run.dir / "checkpoints" / ".staging").exists()
    assert res.stdout.count("next: tunesmith eval") == 1  # one summary, from rank 0
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


@pytest.mark.parametrize(("rank", "local_rank", "node"), [("1", "1", "0"), ("2", "0", "1")])
def test_other_ranks_write_no_run_files(tiny_recipe, monkeypatch, rank, local_rank, node):
    """Only global rank 0 writes: not rank 1 beside it, nor node 1's local rank 0 on a shared filesystem.

    They create nothing, not even the folder: one they made first would race rank 0 claiming a new folder.
    """
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("GROUP_RANK", node)
    recipe = load_recipe(tiny_recipe())
    run_dir, _ = start.prepare_run_dir(recipe, resume=False)
    assert not run_dir.exists()  # no folder, no run.yaml, no metrics.jsonl
    assert not faults.is_main_process() and launch.rank() == int(rank)


def test_nproc_needs_two(tiny_recipe):
    from tunesmith.errors import RunError

    with pytest.raises(launch.LaunchOptionsError, match="at least 2"):
        launch.topology(nproc=1)
    assert launch.topology() is None  # no launch options: train in this process
    with pytest.raises(RunError, match="accelerate config not found"):
        launch.config_path("nope")


def test_shipped_configs_are_package_data():
    """The configs live inside the package and pyproject ships them, so `pip install tunesmith` (a wheel) has them."""
    from pathlib import Path

    import tomllib

    import tunesmith

    package = Path(tunesmith.__file__).parent
    assert launch.CONFIG_DIR.parent == package
    globs = tomllib.loads((package.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tunesmith"]
    shipped = {p.relative_to(package) for g in globs for p in package.glob(g)}
    for name in ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        assert launch.config_path(name).relative_to(package) in shipped


@pytest.mark.parametrize("name", ["fsdp", "deepspeed_zero3"])
def test_sharding_without_gpus_is_refused(name, monkeypatch):
    """On CPU accelerate would run these as plain DDP (MULTI_CPU ignores the FSDP plugin): refused, not faked."""
    import torch

    from tunesmith.errors import RunError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("launched a run that would not shard"))
    with pytest.raises(RunError, match="GPUs only"):
        launch.launch(launch.Topology(nproc=2), name, ["train", "r.yaml"])


def test_model_is_loaded_after_the_distributed_state_exists(tiny_recipe, tiny_model_dir, monkeypatch):
    """FSDP's rank-0-only loading and ZeRO-3's partitioned init both need the process state before from_pretrained."""
    from accelerate import PartialState

    from tunesmith import models
    from tunesmith.train import policy

    seen = []
    monkeypatch.setattr(PartialState, "_shared_state", {})  # as in a fresh process
    monkeypatch.setattr(models, "load_model", lambda *a, **k: seen.append(PartialState._shared_state != {}))
    policy.load(load_recipe(tiny_recipe()), str(tiny_model_dir))
    assert seen == [True]


def test_qlora_lands_on_this_ranks_gpu(monkeypatch, tiny_model_dir):
    """Under --nproc each rank's 4-bit base goes to cuda:LOCAL_RANK, not every rank onto cuda:0."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith import models

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(models, "torch_dtype", lambda name: torch.float32)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(k) or object())
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    models.load_model(str(tiny_model_dir), quantization_config=object())
    assert calls[-1]["device_map"] == {"": 1}


def test_distributed_model_is_left_for_the_trainer_to_place(monkeypatch, tiny_model_dir):
    """Under --nproc a plain model is not moved after loading: FSDP ranks other than 0 hold meta tensors then."""
    from transformers import AutoModelForCausalLM

    from tunesmith import models

    class Model:
        def to(self, device):
            pytest.fail(f"moved to {device} before accelerate could shard it")

    model = Model()
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert models.load_model(str(tiny_model_dir), "float32") is model


FSDP_ON_CPU = (
    "FSDP needs 2 CUDA GPUs: accelerate attaches its FSDP plugin only to GPU/accelerator process groups; with "
    "ACCELERATE_USE_CPU (gloo) AcceleratorState is MULTI_CPU and would train plain DDP, so tunesmith refuses it "
    "(test_sharding_without_gpus_is_refused); torch's own gloo FSDP is not reachable through the Trainer"
)


@pytest.mark.skipif(__import__("torch").cuda.device_count() < 2, reason=FSDP_ON_CPU)
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_two_processes_fsdp_save_a_whole_model(tiny_recipe, tiny_model_dir, adapter):
    """FSDP shards the model; the final save gathers it: the saved adapter/model loads with every weight full-size."""
    from safetensors.torch import load_file

    path = tiny_recipe(adapter={"type": adapter}, training={"max_steps": 4, "batch_size": 2})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2", "--accelerate-config", "fsdp"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    run = load_run(load_recipe(path).run_dir)
    assert run.manifest.figures.world_size == 2
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if adapter == "full":
        saved = load_file(str(run.adapter_dir / "model.safetensors"))
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in base.state_dict().items() if k in saved}
        assert len(saved) >= len(dict(base.named_parameters())) - 1  # lm_head may be tied
        return
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(run.adapter_dir))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


class _FakeTrainer:
    """Records the collective save; `save_model` writes a file only where the Trainer would (args.should_save)."""

    def __init__(self, fsdp: bool, should_save: bool):
        from types import SimpleNamespace

        self.is_fsdp_enabled = fsdp
        self.calls = []
        plugin = SimpleNamespace(set_state_dict_type=lambda kind: self.calls.append(("state_dict_type", kind)))
        self.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
        self.should_save = should_save

    def save_model(self, out):
        self.calls.append(("save_model", out))
        if self.should_save:
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "adapter_model.safetensors"), "w").close()


class _Tok:
    def save_pretrained(self, out):
        open(os.path.join(out, "tokenizer.json"), "w").close()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_final_save_is_collective_and_gathers_fsdp_shards(tmp_path, monkeypatch, rank):
    """Every rank joins trainer.save_model (FSDP switched to a full state dict first); only rank 0 writes and renames."""
    from tunesmith.train.finish import save_adapter

    monkeypatch.setenv("RANK", rank)
    trainer = _FakeTrainer(fsdp=True, should_save=rank == "0")
    save_adapter(trainer, _Tok(), tmp_path)
    assert trainer.calls == [("state_dict_type", "FULL_STATE_DICT"), ("save_model", str(tmp_path / ".adapter.tmp"))]
    if rank == "0":
        assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_model.safetensors", "tokenizer.json"]
    else:
        assert list(tmp_path.iterdir()) == []  # rank 1 took part in the gather and wrote nothing


def test_qlora_under_fsdp_is_refused(tiny_recipe, tiny_model_dir, monkeypatch):
    from tunesmith.errors import RecipeError
    from tunesmith.train import policy

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RecipeError, match="qlora is not supported under FSDP"):
        policy.load(load_recipe(tiny_recipe(adapter={"type": "qlora"})), str(tiny_model_dir))
