"""Every method x adapter on the tiny random Llama: the trainable parameters moved, the frozen ones did not."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import chat_rows, write_jsonl
from tunesmith.config import load_recipe
from tunesmith.run import load_run, read_metrics
from tunesmith.train.entry import run as train_run


def _base_sd(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def _tuned(run, model_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(run.adapter_dir))


def assert_lora_moved_base_frozen(run, model_dir, fully_trained_prefix: str | None = None):
    """lora_B starts at zero and must have moved; every base weight outside `fully_trained_prefix` is unchanged."""
    base = _base_sd(model_dir)
    tuned = _tuned(run, model_dir)
    moved_lora = frozen = moved_full = 0
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            moved_lora += int(param.abs().sum() > 0)
            continue
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        key = key.replace(".modules_to_save.default", "").replace(".original_module", "")
        if fully_trained_prefix and key.startswith(fully_trained_prefix):
            if ".modules_to_save." in name:  # the trained copy saved with the adapter
                moved_full += int(not torch.equal(param, base[key]))
            continue
        assert torch.equal(param, base[key]), f"frozen weight {key} changed"
        frozen += 1
    assert moved_lora > 0 and frozen > 0
    return moved_full


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_sft_lora_and_dora(tiny_recipe, tiny_model_dir, adapter):
    run = train_run(load_recipe(tiny_recipe(adapter={"type": adapter, "use_rslora": adapter == "lora"})))
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is (adapter == "dora") and config["use_rslora"] is (adapter == "lora")
    assert_lora_moved_base_frozen(run, tiny_model_dir)
    if adapter == "dora":
        assert any("lora_magnitude_vector" in k for k in load_file(str(run.adapter_dir / "adapter_model.safetensors")))


def test_sft_hybrid_trains_top_layer_in_full(tiny_recipe, tiny_model_dir):
    run = train_run(load_recipe(tiny_recipe(training={"unfreeze_top_layers": 1})))
    saved = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    assert any(k.startswith("base_model.model.model.layers.1.") and "lora" not in k for k in saved)  # full layer saved
    assert not any("layers.1." in k and "lora" in k for k in saved)  # no LoRA inside the fully trained layer
    moved_full = assert_lora_moved_base_frozen(run, tiny_model_dir, fully_trained_prefix="model.layers.1.")
    assert moved_full > 0  # the reloaded top layer carries the trained weights


def test_sft_prompt_tuning_moves_only_the_soft_prompt(tiny_recipe, tiny_model_dir):
    from peft import get_peft_model

    from tunesmith.train import _trl

    recipe = load_recipe(
        tiny_recipe(
            adapter={"type": "prompt_tuning", "num_virtual_tokens": 4, "prompt_tuning_init_text": "Answer with JSON."},
            training={"learning_rate": 5e-2},
        )
    )
    run = train_run(recipe)
    saved = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape[0] == 4
    initial = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), _trl.build_peft_config(recipe.adapter, str(tiny_model_dir))
    )
    start = initial.prompt_encoder["default"].embedding.weight.detach()
    assert not torch.allclose(saved["prompt_embeddings"], start)
    tuned = _tuned(run, tiny_model_dir)
    base = _base_sd(tiny_model_dir)
    for name, param in tuned.base_model.named_parameters():
        assert torch.equal(param, base[name]), name


def test_qlora_loads_4bit_nf4_and_trains_the_adapter(tiny_recipe, tiny_qlora_model_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from tunesmith.train import policy

    recipe = load_recipe(tiny_recipe(model={"base": str(tiny_qlora_model_dir)}, adapter={"type": "qlora"}))
    model = policy.load(recipe, str(tiny_qlora_model_dir))
    q = model.config.quantization_config
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant is True
    del model
    run = train_run(recipe)
    assert run.manifest.adapter == "qlora"
    assert_lora_moved_base_frozen(run, tiny_qlora_model_dir)


@pytest.fixture(scope="module")
def tiny_qlora_model_dir(tmp_path_factory):
    """The tiny Llama a little wider: bitsandbytes' CPU 4-bit kernels need output widths of at least 32."""
    from helpers import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-64"), hidden=64)


def _preference_file(path, n=24):
    rows = []
    for r in chat_rows(n, seed=3):
        rows.append(
            {"prompt": r["messages"][:2], "chosen": [r["messages"][2]], "rejected": [{"role": "assistant", "content": "no idea"}]}
        )
    return write_jsonl(path, rows)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_dpo(tiny_recipe, tiny_model_dir, tmp_path, monkeypatch, adapter):
    from trl import DPOTrainer

    seen = {}
    original = DPOTrainer.train

    def spy(self, *args, **kwargs):
        seen["ref_model"] = self.ref_model  # the reference must not be a second copy of the model
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "train", spy)
    _preference_file(tmp_path / "pref.jsonl")
    recipe = load_recipe(
        tiny_recipe(method="dpo", adapter={"type": adapter}, data={"train": ["pref.jsonl"], "eval": None}, dpo={"beta": 0.2})
    )
    run = train_run(recipe)
    assert seen["ref_model"] is None
    assert run.manifest.method == "dpo" and "rewards/margins" in run.manifest.details.final_eval
    assert any("rewards/margins" in r for r in read_metrics(run.dir))
    if adapter == "lora":
        assert_lora_moved_base_frozen(run, tiny_model_dir)
    else:
        tuned = AutoModelForCausalLM.from_pretrained(run.adapter_dir).state_dict()
        base = _base_sd(tiny_model_dir)
        assert sum(not torch.equal(tuned[k], base[k]) for k in base) > len(base) // 2
    # eval works on a DPO run: prompts are the preference prompts, references the chosen answers
    from tunesmith.train.methods import eval_examples

    examples = eval_examples(load_run(run.dir).recipe)
    assert examples and examples[0].messages[-1]["content"].startswith('{"sum"')


def _grpo_data(tmp_path):
    """prompts.jsonl (24 prompts with an `answer` column) and my_rewards.py (a reward that varies with the text)."""
    (tmp_path / "my_rewards.py").write_text(
        "def distinct_chars(prompts, completions, **kw):\n"
        "    return [len(set(c[0]['content'] if isinstance(c, list) else c)) / 10 for c in completions]\n"
    )
    write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": r["messages"][:2], "answer": r["messages"][2]["content"]} for r in chat_rows(24, 4)],
    )


def test_grpo_with_a_user_reward(tiny_recipe, tiny_model_dir, tmp_path):
    _grpo_data(tmp_path)
    recipe = load_recipe(
        tiny_recipe(
            method="grpo",
            data={"train": ["prompts.jsonl"], "eval": None},
            grpo={
                "rewards": ["json_valid", "my_rewards:distinct_chars", {"type": "exact_match", "field": "answer", "weight": 0.5}],
                "num_generations": 4,
                "max_completion_length": 8,
            },
        )
    )
    assert recipe.grpo.rewards[1].function.endswith("my_rewards.py:distinct_chars")
    run = train_run(recipe)
    logged = [r for r in read_metrics(run.dir) if "reward" in r]
    assert len(logged) == 4 and all("reward_std" in r and "rewards/distinct_chars/mean" in r for r in logged)
    assert run.manifest.details.logged_steps == 4
    assert_lora_moved_base_frozen(run, tiny_model_dir)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_model_dir):
    """A second tiny Llama with the same tokenizer but other weights: a teacher the student can learn from."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("teacher")
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
    torch.manual_seed(7)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_distill_sequence_saves_audits_and_trains_on_teacher_answers(tiny_recipe, tiny_model_dir, teacher_dir):
    run = train_run(load_recipe(tiny_recipe(method="distill", distill={"teacher": str(teacher_dir), "max_new_tokens": 6})))
    generated = run.dir / "distill" / "train.jsonl"
    rows = [json.loads(line) for line in generated.read_text().splitlines()]
    assert len(rows) == 24 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert json.loads((run.dir / "distill" / "audit.json").read_text())["files"]
    m = run.manifest
    assert m.method == "distill" and m.details.mode == "sequence" and m.details.files.train.rows == 24
    assert load_run(run.dir).recipe.data.train == [str(generated)]  # eval scores agreement with the teacher
    assert_lora_moved_base_frozen(run, tiny_model_dir)


def test_distill_logits(tiny_recipe, tiny_model_dir, teacher_dir):
    run = train_run(load_recipe(tiny_recipe(method="distill", distill={"teacher": str(teacher_dir), "mode": "logits"})))
    assert run.manifest.details.mode == "logits"
    losses = [r["loss"] for r in read_metrics(run.dir) if "loss" in r]
    assert losses and losses[-1] < losses[0]  # the student moves towards the teacher's distributions
    assert_lora_moved_base_frozen(run, tiny_model_dir)


def test_distill_logits_refuses_another_tokenizer(tiny_recipe, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.errors import RecipeError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<extra_token>"])
    other = tmp_path / "other-teacher"
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(RecipeError, match="share a tokenizer"):
        train_run(load_recipe(tiny_recipe(method="distill", distill={"teacher": str(other), "mode": "logits"})))


def _fp32_and_bf16_curves(tiny_recipe, name, **sections):
    """Six steps of one method at speed.precision fp32 and bf16: both loss curves and both runs. Checks the curves
    agree within 3%, moved, and differ at all (bf16 really ran: autocast rounds differently)."""
    curves = {}
    for precision in ("fp32", "bf16"):
        path = tiny_recipe(
            training={"max_steps": 6, "learning_rate": 1e-3},
            speed={"precision": precision},
            output_dir=f"runs/{name}-{precision}",
            **sections,
        )
        run = train_run(load_recipe(path))
        curves[precision] = [m["loss"] for m in read_metrics(run.dir) if "loss" in m and "eval_loss" not in m], run
    (fp32, fp32_run), (bf16, run) = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == 6 and fp32[0] != fp32[-1]  # over training, not six copies of one number
    assert max(abs(a - b) / a for a, b in zip(fp32, bf16)) < 0.03
    assert fp32 != bf16
    assert run.manifest.speed.bf16 and not fp32_run.manifest.speed.bf16
    return run.manifest.speed


def test_dpo_bf16_levers_keep_the_loss_curve(tiny_recipe, tmp_path):
    """DPO with SFT's precision levers (bf16 autocast, the frozen base stored in bf16, no adapter input cast, fused
    AdamW) trains the fp32 curve within 3%, and the manifest records the levers."""
    _preference_file(tmp_path / "pref.jsonl")
    lever = _fp32_and_bf16_curves(
        tiny_recipe, "dpo", method="dpo", data={"train": ["pref.jsonl"], "eval": None}, dpo={"beta": 0.2}
    )
    assert lever.base_dtype == "bfloat16" and not lever.adapter_input_cast and lever.fused_optimizer
    assert lever.packing == "off"


def test_distill_logits_bf16_levers_keep_the_loss_curve(tiny_recipe, teacher_dir):
    """Logit distillation under bf16 autocast (student base and teacher stored in bf16) follows the fp32 curve."""
    lever = _fp32_and_bf16_curves(tiny_recipe, "gkd", method="distill", distill={"teacher": str(teacher_dir), "mode": "logits"})
    assert lever.base_dtype == "bfloat16"


def test_grpo_bf16_levers_keep_the_rewards_and_losses(tiny_recipe, tiny_model_dir, tmp_path):
    """GRPO takes the one precision decision too: under bf16 (autocast, the frozen base stored in bf16, the adapter's
    input cast to fp32 where completions are sampled outside autocast) four steps sample the same completions as
    fp32 from the same seed, so rewards match, and the losses and gradient norms agree within 3%."""
    _grpo_data(tmp_path)
    logged, runs = {}, {}
    for precision in ("fp32", "bf16"):
        recipe = tiny_recipe(
            method="grpo",
            data={"train": ["prompts.jsonl"], "eval": None},
            grpo={"rewards": ["my_rewards:distinct_chars"], "num_generations": 4, "max_completion_length": 8, "beta": 0.04},
            speed={"precision": precision},
            output_dir=f"runs/grpo-{precision}",
        )
        runs[precision] = train_run(load_recipe(recipe))
        logged[precision] = [r for r in read_metrics(runs[precision].dir) if "reward" in r]
    fp32, bf16 = logged["fp32"], logged["bf16"]
    assert len(fp32) == len(bf16) == 4
    assert [r["reward"] for r in fp32] == pytest.approx([r["reward"] for r in bf16], rel=0.03)
    for key in ("loss", "grad_norm", "entropy"):
        assert [r[key] for r in fp32] == pytest.approx([r[key] for r in bf16], rel=0.03, abs=1e-3), key
    assert [r["grad_norm"] for r in fp32] != [r["grad_norm"] for r in bf16]  # bf16 really ran
    lever, plain = runs["bf16"].manifest.speed, runs["fp32"].manifest.speed
    assert lever.bf16 and lever.base_dtype == "bfloat16" and lever.adapter_input_cast and not plain.bf16
    assert_lora_moved_base_frozen(runs["bf16"], tiny_model_dir)


def test_on_policy_logit_distillation_trains_under_bf16(tiny_recipe, teacher_dir):
    """distill.lmbda > 0 samples student answers outside autocast: under bf16 the adapter's input is cast to its fp32
    weights there (the same lever as GRPO), instead of a bf16 x fp32 matmul failing at the first sampled step."""
    path = tiny_recipe(
        method="distill",
        distill={"teacher": str(teacher_dir), "mode": "logits", "lmbda": 1.0, "max_new_tokens": 4},
        training={"max_steps": 2},
        speed={"precision": "bf16"},
    )
    run = train_run(load_recipe(path))
    assert run.manifest.figures.global_step == 2 and run.manifest.speed.bf16 and run.manifest.speed.adapter_input_cast
