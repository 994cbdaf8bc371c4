"""The recipe → peft/TRL translation, field by field (the one place an upstream rename breaks).

A deprecation warning raised while building these objects is an error here, so an upstream rename is seen the
day it lands, not when the old name is finally removed. The libraries are imported at collection time, outside
the strict filter: their own import-time warnings are not about the API tunesmith calls.
"""

import peft  # noqa: F401
import pytest
import transformers  # noqa: F401
import trl  # noqa: F401
import trl.experimental.gkd  # noqa: F401

from tunesmith.config import AdapterSection, Recipe
from tunesmith.train import _trl

pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning", "error::FutureWarning")


def _recipe(tmp_path, **training):
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return Recipe.model_validate(
        {"data": {"train": ["t.jsonl"]}, "training": training, "output_dir": "out"},
        context={"base_dir": str(tmp_path)},
    )


def test_lora_config_fields():
    cfg = _trl.build_peft_config(
        AdapterSection(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    )
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"} and cfg.modules_to_save == ["lm_head"]
    assert cfg.task_type == "CAUSAL_LM"
    assert _trl.build_peft_config(AdapterSection(type="full")) is None


def test_sft_config_fields(tmp_path):
    recipe = _recipe(
        tmp_path,
        learning_rate=3e-4,
        batch_size=2,
        grad_accum=3,
        max_steps=7,
        seed=5,
        warmup_ratio=0.1,
        lr_scheduler="linear",
        save_steps=11,
        save_total_limit=4,
        logging_steps=2,
        max_grad_norm=0.5,
        eval_steps=3,
    )
    cfg = _trl.build_sft_config(recipe, recipe.run_dir, has_eval=True)
    assert cfg.learning_rate == 3e-4 and cfg.per_device_train_batch_size == 2 and cfg.gradient_accumulation_steps == 3
    assert cfg.max_steps == 7 and cfg.seed == 5 and cfg.data_seed == 5
    assert cfg.get_warmup_steps(100) == 10  # the ratio reaches transformers as a fraction of steps
    assert str(cfg.lr_scheduler_type.value if hasattr(cfg.lr_scheduler_type, "value") else cfg.lr_scheduler_type) == "linear"
    assert cfg.save_steps == 11 and cfg.save_total_limit == 4 and cfg.logging_steps == 2 and cfg.max_grad_norm == 0.5
    assert (
        str(cfg.eval_strategy.value if hasattr(cfg.eval_strategy, "value") else cfg.eval_strategy) == "steps"
        and cfg.eval_steps == 3
    )
    assert cfg.output_dir == str(recipe.run_dir / "checkpoints")
    # Rows come pre-tokenized with labels: TRL must neither truncate nor re-mask them.
    assert cfg.max_length is None and cfg.packing is False and cfg.assistant_only_loss is False
    assert cfg.report_to == [] or cfg.report_to == "none"


def _method_recipe(tmp_path, **sections):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    data = {"data": {"train": ["p.jsonl"], "max_length": 200}, "output_dir": "out", **sections}
    return Recipe.model_validate(data, context={"base_dir": str(tmp_path)})


def test_dora_rslora_and_prompt_tuning_configs():
    from peft import PromptTuningConfig, PromptTuningInit

    dora = _trl.build_peft_config(AdapterSection(type="dora", use_rslora=True))
    assert dora.use_dora is True and dora.use_rslora is True
    lora = _trl.build_peft_config(AdapterSection(type="qlora"))
    assert lora.use_dora is False and lora.use_rslora is False
    pt = _trl.build_peft_config(
        AdapterSection(type="prompt_tuning", num_virtual_tokens=7, prompt_tuning_init_text="Be brief."), "/base"
    )
    assert isinstance(pt, PromptTuningConfig) and pt.num_virtual_tokens == 7 and pt.task_type == "CAUSAL_LM"
    assert (
        pt.prompt_tuning_init == PromptTuningInit.TEXT
        and pt.prompt_tuning_init_text == "Be brief."
        and pt.tokenizer_name_or_path == "/base"
    )
    assert _trl.build_peft_config(AdapterSection(type="prompt_tuning")).prompt_tuning_init == PromptTuningInit.RANDOM


def test_hybrid_lora_below_full_layers_on_top():
    cfg = _trl.build_peft_config(
        AdapterSection(target_modules=["q_proj"]), unfreeze_top_layers=2, num_layers=5, layers_path="model.layers"
    )
    assert cfg.layers_to_transform == [0, 1, 2] and cfg.layers_pattern == "layers"
    assert cfg.modules_to_save == ["model.layers.3", "model.layers.4"]


def test_bnb_config_is_nf4_double_quant():
    import pytest

    pytest.importorskip("bitsandbytes")
    q = _trl.build_bnb_config(AdapterSection(type="qlora"))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant is True
    assert _trl.build_bnb_config(AdapterSection(type="lora")) is None


def test_dpo_config_fields(tmp_path):
    recipe = _method_recipe(
        tmp_path,
        method="dpo",
        dpo={"beta": 0.3, "loss_type": "ipo", "label_smoothing": 0.1},
        training={"learning_rate": 1e-5, "seed": 3},
    )
    cfg = _trl.build_dpo_config(recipe, recipe.dpo, recipe.run_dir, has_eval=True)
    assert cfg.beta == 0.3 and cfg.loss_type == ["ipo"] and cfg.label_smoothing == 0.1
    # train.dpo applied data.max_length (200) and counted it; TRL must not truncate again
    assert cfg.max_length is None and cfg.learning_rate == 1e-5 and cfg.seed == 3
    assert cfg.precompute_ref_log_probs is False  # the adapter's base is the reference
    full = _method_recipe(tmp_path, method="dpo", adapter={"type": "full"})
    assert _trl.build_dpo_config(full, full.dpo, full.run_dir, has_eval=True).precompute_ref_log_probs is True


def test_reward_config_fields(tmp_path):
    recipe = _method_recipe(tmp_path, method="reward", reward={"center_rewards_coefficient": 0.01}, training={"seed": 5})
    cfg = _trl.build_reward_config(recipe, recipe.reward, recipe.run_dir, has_eval=True)
    # train.reward tokenized the pairs within data.max_length and counted it; TRL must not filter again
    assert cfg.max_length is None and cfg.center_rewards_coefficient == 0.01 and cfg.seed == 5
    assert cfg.disable_dropout is False  # adapter.dropout decides, as for every method
    assert _trl.build_reward_config(recipe, type(recipe.reward)(), recipe.run_dir, False).center_rewards_coefficient is None


def test_grpo_config_fields(tmp_path):
    recipe = _method_recipe(
        tmp_path,
        method="grpo",
        training={"batch_size": 6, "grad_accum": 2},
        grpo={
            "rewards": ["json_valid", {"type": "length_penalty", "weight": 0.25}],
            "num_generations": 3,
            "max_completion_length": 40,
            "temperature": 0.7,
            "beta": 0.05,
            "scale_rewards": "batch",
        },
    )
    cfg = _trl.build_grpo_config(recipe, recipe.grpo, recipe.run_dir)
    assert cfg.num_generations == 3 and cfg.max_completion_length == 40 and cfg.temperature == 0.7
    assert cfg.beta == 0.05 and cfg.scale_rewards == "batch" and cfg.reward_weights == [1.0, 0.25]
    assert cfg.per_device_train_batch_size == 6 and cfg.gradient_accumulation_steps == 2


def test_gkd_config_fields(tmp_path):
    recipe = _method_recipe(
        tmp_path,
        method="distill",
        distill={"teacher": "some/model", "mode": "logits", "beta": 0.2, "temperature": 0.8, "lmbda": 0.25, "max_new_tokens": 33},
    )
    cfg = _trl.build_gkd_config(recipe, recipe.distill, recipe.run_dir, has_eval=True)
    assert (cfg.beta, cfg.temperature, cfg.lmbda, cfg.max_new_tokens) == (0.2, 0.8, 0.25, 33)
    assert cfg.seq_kd is False and cfg.max_length == 200 and cfg.packing is False


def test_gradient_checkpointing_uses_the_current_name(tmp_path):
    """transformers 5 renamed it activation_checkpointing; the old name still works but warns (an error here)."""
    recipe = _recipe(tmp_path, gradient_checkpointing=True)
    cfg = _trl.build_sft_config(recipe, recipe.run_dir, has_eval=False)
    assert cfg.activation_checkpointing is True and cfg.gradient_checkpointing is True


def test_a_deprecation_in_the_translation_is_an_error():
    import warnings

    with pytest.raises(FutureWarning):
        warnings.warn("`old` is deprecated", FutureWarning, stacklevel=1)
