"""SFT on the tiny random Llama: what moved, what did not, resume, merge."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunesmith.config import load_recipe
from tunesmith.errors import RunError
from tunesmith.outputs import OutputError
from tunesmith.records import read_manifest
from tunesmith.run import load_run, read_metrics
from tunesmith.train import sft
from tunesmith.train.callbacks import latest_complete_checkpoint


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_lora_moves_only_adapter_weights(tiny_recipe, tiny_model_dir):
    run = sft.run(load_recipe(tiny_recipe()))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir))
    base_sd = base.state_dict()
    changed_lora, frozen_same = 0, 0
    for name, param in tuned.named_parameters():
        if "lora_B" in name:  # B starts at zero; training must move it
            changed_lora += int(param.abs().sum() > 0)
        elif "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base_sd[key]), f"frozen weight {key} changed"
            frozen_same += 1
    assert changed_lora > 0 and frozen_same > 0
    # Run folder explains itself.
    m = run.manifest
    assert m.figures.global_step == 4 and m.tokens.train.kept == 24
    assert len(m.chat_template_sha256) == 64 and all(len(h) == 64 for h in m.data.values())
    assert m.versions["transformers"] and m.figures.peak_memory_mb > 0
    assert read_manifest(run.dir / "manifest.json") == m  # the typed record round-trips
    assert (run.dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert any("loss" in row for row in read_metrics(run.dir))


def test_refuses_to_overwrite_a_finished_run(tiny_recipe):
    path = tiny_recipe()
    sft.run(load_recipe(path))
    with pytest.raises(RunError, match="already holds a finished run"):
        sft.run(load_recipe(path))


def test_resume_continues_from_last_complete_checkpoint(tiny_recipe):
    path = tiny_recipe(training={"max_steps": 6, "save_steps": 3})
    full = sft.run(load_recipe(path))
    full_weights = _adapter(full.dir)
    full_losses = [r["loss"] for r in read_metrics(full.dir) if "loss" in r]

    # Simulate a crash after step 3: drop what came later, plus a partial (unmarked) newer checkpoint.
    run_dir = full.dir
    for name in ("manifest.json", "adapter", "checkpoints/checkpoint-6"):
        p = run_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (run_dir / "checkpoints" / "checkpoint-9").mkdir()
    metrics = [r for r in read_metrics(run_dir) if r["step"] <= 3]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    assert latest_complete_checkpoint(run_dir / "checkpoints").name == "checkpoint-3"

    resumed = sft.run(load_recipe(path), resume=True)
    assert resumed.manifest.resumed_from.endswith("checkpoint-3")
    assert resumed.manifest.figures.global_step == 6
    resumed_losses = [r["loss"] for r in read_metrics(resumed.dir) if "loss" in r]
    assert [r["step"] for r in read_metrics(resumed.dir) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert resumed_losses == pytest.approx(full_losses, rel=1e-4)
    for key, value in _adapter(resumed.dir).items():
        assert torch.allclose(value, full_weights[key], atol=1e-6), key


def test_resume_without_checkpoint_is_a_clear_error(tiny_recipe):
    with pytest.raises(RunError, match="no complete checkpoint"):
        sft.run(load_recipe(tiny_recipe()), resume=True)


def test_full_finetune_moves_base_weights(tiny_recipe, tiny_model_dir):
    run = sft.run(load_recipe(tiny_recipe(adapter={"type": "full"})))
    tuned = AutoModelForCausalLM.from_pretrained(run.adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values())]
    assert sum(diffs) > len(diffs) // 2


def test_merge_matches_adapter_and_loads_plainly(tiny_recipe, tmp_path):
    from tunesmith.export.merge import merge

    run = sft.run(load_recipe(tiny_recipe()))
    result = merge(load_run(run.dir), tmp_path / "merged", n_check=3, max_new_tokens=8)
    assert result["identical"] == result["prompts"] == 3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert json.loads((tmp_path / "merged" / "tunesmith_lineage.json").read_text())["check"]["identical"] == 3
    with pytest.raises(OutputError, match="not empty"):
        merge(load_run(run.dir), tmp_path / "merged")
    with pytest.raises(RunError, match="4-bit"):
        merge(load_run(run.dir), tmp_path / "m2", dtype="int4")
