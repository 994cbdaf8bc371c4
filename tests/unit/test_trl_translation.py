"""The recipe → peft/TRL translation, field by field (the one place an upstream rename breaks)."""

from tunesmith.config import AdapterSection, DataSection, Recipe
from tunesmith.train import _trl


def _recipe(tmp_path, **training):
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return Recipe.model_validate(
        {"data": {"train": ["t.jsonl"]}, "training": training, "output_dir": "out"},
        context={"base_dir": str(tmp_path)},
    )


def test_lora_config_fields():
    cfg = _trl.build_peft_config(AdapterSection(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"} and cfg.modules_to_save == ["lm_head"]
    assert cfg.task_type == "CAUSAL_LM"
    assert _trl.build_peft_config(AdapterSection(type="full")) is None


def test_sft_config_fields(tmp_path):
    recipe = _recipe(tmp_path, learning_rate=3e-4, batch_size=2, grad_accum=3, max_steps=7, seed=5, warmup_ratio=0.1,
                     lr_scheduler="linear", save_steps=11, save_total_limit=4, logging_steps=2, max_grad_norm=0.5, eval_steps=3)
    cfg = _trl.build_sft_config(recipe, recipe.run_dir, has_eval=True)
    assert cfg.learning_rate == 3e-4 and cfg.per_device_train_batch_size == 2 and cfg.gradient_accumulation_steps == 3
    assert cfg.max_steps == 7 and cfg.seed == 5 and cfg.data_seed == 5
    assert cfg.get_warmup_steps(100) == 10  # the ratio reaches transformers as a fraction of steps
    assert str(cfg.lr_scheduler_type.value if hasattr(cfg.lr_scheduler_type, "value") else cfg.lr_scheduler_type) == "linear"
    assert cfg.save_steps == 11 and cfg.save_total_limit == 4 and cfg.logging_steps == 2 and cfg.max_grad_norm == 0.5
    assert str(cfg.eval_strategy.value if hasattr(cfg.eval_strategy, "value") else cfg.eval_strategy) == "steps" and cfg.eval_steps == 3
    assert cfg.output_dir == str(recipe.run_dir / "checkpoints")
    # Rows come pre-tokenized with labels: TRL must neither truncate nor re-mask them.
    assert cfg.max_length is None and cfg.packing is False and cfg.assistant_only_loss is False
    assert cfg.report_to == [] or cfg.report_to == "none"
