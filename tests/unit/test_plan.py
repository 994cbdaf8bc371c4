"""The planner: parameters from config.json, memory components that move the right way, fixes that fit, and an
estimate within a stated tolerance of the measured peak."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The estimate vs the measured peak RSS of a fresh `tunesmith train` process on the tiny model. At this size
# the figure is mostly the runtime (python + torch + libraries), so this bounds that constant; docs/planner.md
# has the SmolLM2 table, where activations and weights matter.
# At the tiny model's size the process itself (python, torch, the libraries, allocator arenas) is nearly the whole
# peak, and that varied from about 1.0 to 1.5 GB between runs of the same command on this machine (docs/planner.md).
TOLERANCE = 0.6


def test_shape_counts_parameters_like_the_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.plan.memory import Shape

    shape = Shape.from_config(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.params == model.num_parameters()
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_params(4) == lora.get_nb_trainable_parameters()[0]


def test_levers_move_the_estimate_the_right_way(tiny_model_dir):
    from tunesmith.plan.memory import Shape, estimate

    s = Shape.from_config(tiny_model_dir)
    base = estimate(s, batch=8, seq_len=512)
    assert estimate(s, batch=8, seq_len=512, checkpointing=True).activations < base.activations
    answers = estimate(s, batch=8, seq_len=512, trained_fraction=0.25)
    assert estimate(s, batch=8, seq_len=512, trained_fraction=0.25, labelled_logits=False).logits > 3 * answers.logits
    assert estimate(s, batch=8, seq_len=512, adapter="qlora").weights < base.weights
    assert estimate(s, batch=16, seq_len=512).activations == pytest.approx(2 * base.activations)
    full = estimate(s, batch=8, seq_len=512, adapter="full")
    assert full.optimizer == 8 * s.params and full.gradients == 4 * s.params
    # CPU autocast: the allocator's slack between steps counts more when the freed heap is not trimmed after each step.
    trimmed = estimate(s, batch=8, seq_len=512, autocast=True)
    assert estimate(s, batch=8, seq_len=512, autocast=True, trimmed=False).activations == pytest.approx(1.2 * trimmed.activations)
    assert estimate(s, batch=8, seq_len=512, autocast=True, cuda=True, trimmed=False).activations < trimmed.activations


def test_fix_suggests_overrides_that_fit(tiny_recipe):
    from tunesmith.config import load_recipe
    from tunesmith.plan import advisor, cost

    path = tiny_recipe(training={"batch_size": 64})
    recipe = load_recipe(path)
    lengths, trained = [128] * 64, 0.2
    big = advisor.plan(recipe, gpu="h100", lengths=lengths, trained=trained)
    small = advisor.plan(
        load_recipe(path, ["training.batch_size=4", "training.gradient_checkpointing=true"]),
        gpu="h100",
        lengths=lengths,
        trained=trained,
    )
    # A device with room for the small settings only.
    gib = (big.memory_mb["total"] + small.memory_mb["total"]) / 2 / 1024 / 0.9
    cost.GPUS["tiny-test-gpu"] = cost.Hardware("tiny-test-gpu", gib, 121.0, 0.35, 0.8)
    try:
        p = advisor.plan(recipe, gpu="tiny-test-gpu", lengths=lengths, trained=trained)
        fixed = advisor.plan(load_recipe(path, p.fix), gpu="tiny-test-gpu", lengths=lengths, trained=trained)
    finally:
        del cost.GPUS["tiny-test-gpu"]
    assert big.fits and not big.fix
    assert not p.fits and p.fix
    assert "training.gradient_checkpointing=true" in p.fix
    assert fixed.fits
    assert big.steps == 4 and big.tokens == 4 * 64 * 128 and big.seconds > 0


def test_gradient_checkpointing_auto_follows_the_plan(tiny_recipe):
    """training.gradient_checkpointing: auto is off when the estimate (made without it) fits, on when it does not;
    an explicit true/false is kept whatever the plan says."""
    from tunesmith.config import load_recipe
    from tunesmith.plan import advisor
    from tunesmith.train import speed

    recipe = load_recipe(tiny_recipe(training={"batch_size": 64}))
    assert recipe.training.gradient_checkpointing == "auto"
    fits = advisor.plan(recipe, gpu="h100", lengths=[128] * 64, trained=0.2)
    too_big = fits.model_copy(update={"fits": False})
    assert fits.fits and not speed.resolve(recipe, fits).gradient_checkpointing
    assert speed.resolve(recipe, too_big).gradient_checkpointing
    assert speed.sft_args(speed.resolve(recipe, too_big))["activation_checkpointing"]
    assert not speed.resolve(recipe, None).gradient_checkpointing  # no plan (unreadable config): off, as before
    off = load_recipe(tiny_recipe(training={"gradient_checkpointing": False}))
    on = load_recipe(tiny_recipe(training={"gradient_checkpointing": True}))
    assert not speed.resolve(off, too_big).gradient_checkpointing and speed.resolve(on, fits).gradient_checkpointing


def test_estimate_is_within_tolerance_of_measured_peak(tiny_recipe, tmp_path):
    import json

    recipe = tiny_recipe()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(recipe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "plan vs measured" in res.stdout
    plan = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())["plan"]
    est, got = plan["memory_mb"]["total"], plan["measured"]["peak_mb"]
    assert abs(est - got) / got < TOLERANCE, (est, got)


def test_plan_command_prints_the_estimate(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "plan", str(recipe), "--gpu", "l4", "--price", "1.5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "plan on 1 x l4" in res.stdout and "activations" in res.stdout and "fits" in res.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tunesmith", "plan", str(recipe), "--gpu", "tpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "--gpu" in bad.stdout + bad.stderr


def _plan_cli(*args):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["plan", *map(str, args)], env={"COLUMNS": "300"})
    out = " ".join(res.output.split())
    assert "Traceback" not in out and (res.exception is None or isinstance(res.exception, SystemExit)), out
    return res.exit_code, out


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_nproc_below_one_is_refused_never_planned(tiny_recipe, nproc):
    code, out = _plan_cli(tiny_recipe(), "--nproc", nproc)
    assert code == 2 and "--nproc" in out and "fits" not in out and "steps of -" not in out, out
    from tunesmith.config import load_recipe
    from tunesmith.errors import RecipeError
    from tunesmith.plan import advisor

    with pytest.raises(RecipeError, match="--nproc"):  # the library refuses it too
        advisor.plan(load_recipe(tiny_recipe()), gpu="h100", nproc=int(nproc), lengths=[64] * 8, trained=0.5)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 100}, "lacks positive integer"),
        (
            {"model_type": "llama", "num_hidden_layers": "2", "hidden_size": 32, "vocab_size": 9, "num_attention_heads": 4},
            "num_hidden_layers",
        ),
        ([1, 2], "not a model config"),
        ("{broken", "not a readable config.json"),
    ],
)
def test_a_config_the_planner_cannot_read_is_a_clear_error(tmp_path, config, message):
    import json

    from tunesmith.errors import ModelError
    from tunesmith.plan.memory import Shape

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(ModelError, match=message) as info:
        Shape.from_config(folder)
    assert isinstance(info.value, ValueError)  # training treats it as "no plan" and trains on


def test_plan_cli_on_a_non_llama_model_and_a_missing_data_file(tmp_path, tiny_model_dir):
    import json
    import shutil

    from helpers import chat_rows, write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, gpt2, ignore=shutil.ignore_patterns("*.safetensors"))
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "vocab_size": 100}))
    code, out = _plan_cli("--model", gpt2, "--data", data)
    assert code == 1 and "lacks positive integer" in out and "Llama-style" in out, out
    code, out = _plan_cli("--model", tiny_model_dir, "--data", tmp_path / "missing.jsonl")
    assert code == 1 and "data.train.0" in out and "missing.jsonl" in out.replace(" ", ""), out  # a long path may wrap
    code, out = _plan_cli("--model", tiny_model_dir, "--data", data, "--price", "-1")
    assert code == 2 and "--price" in out


@pytest.mark.parametrize(
    ("flags", "cap", "precision"),
    [
        ({"avx2", "fma"}, None, "fp32"),  # an AVX2 CPU without bf16 units
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", "fp32"),  # bf16 units, oneDNN capped below them (the simulation)
        ({"avx2", "avx512f", "avx512_bf16"}, None, "bf16"),
        ({"avx2", "avx512f", "amx_bf16"}, "AVX512_CORE_AMX", "bf16"),
    ],
)
def test_cpu_time_estimate_uses_the_precision_the_machine_trains_in(tiny_recipe, monkeypatch, flags, cap, precision):
    """The CPU time model divides by the matmul rate measured in the precision training will use: fp32 where the CPU
    has no bf16 units (or oneDNN is capped below them), bf16 only where it has them; speed.precision agrees."""
    from tunesmith.config import load_recipe
    from tunesmith.plan import advisor, cost
    from tunesmith.plan.memory import Shape
    from tunesmith.train import hardware, speed

    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("test CPU", frozenset(flags)))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    probed = []
    rates = {"float32": 50.0, "bfloat16": 400.0}  # GFLOP/s: the 8x gap of a CPU with bf16 units

    def gemm(dtype="float32", **kw):
        probed.append(dtype)
        return rates[dtype]

    monkeypatch.setattr(hardware, "gemm_gflops", gemm)
    recipe = load_recipe(tiny_recipe(speed={"shared_prefix": False}))
    p = advisor.plan(recipe, gpu="cpu", lengths=[100] * 24, trained=0.3)
    dtype = "bfloat16" if precision == "bf16" else "float32"
    assert probed == [dtype] and p.precision == precision
    assert speed.uses_bf16(recipe, cuda=False) is (precision == "bf16")
    params = Shape.from_config(recipe.model.base).params
    expected = p.tokens * 4 * params / (rates[dtype] * 1e9 * cost.CPU_EFFICIENCY[precision])
    assert p.seconds == pytest.approx(expected)
    assert p.device_tflops == pytest.approx(rates[dtype] / 1e3)
