"""Two CPU processes (gloo DDP) through `tunesmith train --nproc 2`: both ranks train, only rank 0 writes."""

import os
import subprocess
import sys

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
    cmd = launch.command(4, launch.config_path(name), ["train", "r.yaml"])
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[-4:] == ["-m", "tunesmith", "train", "r.yaml"]


def test_two_processes_train_and_rank0_writes(tiny_recipe, tiny_model_dir):
    # 24 rows, micro-batch 2: one process takes 12 steps for an epoch, two processes take 6.
    path = tiny_recipe(training={"max_steps": -1, "epochs": 1, "batch_size": 2, "save_steps": 3})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    run = load_run(load_recipe(path).run_dir)
    assert run.manifest.figures.global_step == 6  # the data was split between two ranks
    ckpt = run.dir / "checkpoints" / "checkpoint-6"
    assert (ckpt / COMPLETE).exists()
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()  # both ranks saved, then one renamed
    assert not (run.dir / "checkpoints" / ".staging").exists()
    assert res.stdout.count("next: tunesmith eval") == 1  # one summary, from rank 0
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_other_ranks_write_no_run_files(tiny_recipe, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    recipe = load_recipe(tiny_recipe())
    run_dir, _ = start.prepare_run_dir(recipe, resume=False)
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []  # no run.yaml, no metrics.jsonl
    assert not faults.is_main_process() and launch.rank() == 1


def test_nproc_needs_two(tiny_recipe):
    from tunesmith.errors import RunError

    with pytest.raises(RunError, match="at least 2"):
        launch.launch(1, "ddp", ["train", "x"])
    with pytest.raises(RunError, match="accelerate config not found"):
        launch.config_path("nope")
