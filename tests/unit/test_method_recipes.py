"""Recipe rules for adapters and methods: each bad combination is a field error before any model loads; shipped configs validate."""

from pathlib import Path

import pytest
import yaml

from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path, recipe: dict, rows: str = '{"prompt": "a", "completion": "b"}\n') -> Path:
    (tmp_path / "t.jsonl").write_text(rows)
    recipe.setdefault("data", {"train": ["t.jsonl"]})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _problems(path) -> dict[str, str]:
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    return dict(exc.value.problems)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem and all(Path(f).exists() for f in recipe.data.train)


def test_shipped_recipes_cover_every_method():
    assert {load_recipe(p).method for p in CONFIGS.glob("*.yaml")} == {"sft", "dpo", "grpo", "distill", "reward"}


def test_dpo_needs_preference_pairs(tmp_path):
    problems = _problems(_write(tmp_path, {"method": "dpo"}))
    assert "preference pairs" in problems["data"] and "prompt_completion" in problems["data"]
    ok = _write(
        tmp_path,
        {"method": "dpo"},
        '{"input": {"messages": [{"role": "user", "content": "q"}]}, '
        '"preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}\n',
    )
    assert load_recipe(ok).method == "dpo"


def test_reward_needs_preference_pairs(tmp_path):
    problems = _problems(_write(tmp_path, {"method": "reward"}))
    assert "method reward needs preference pairs" in problems["data"]


def test_grpo_needs_rewards_and_whole_groups(tmp_path):
    assert "rewards" in _problems(_write(tmp_path, {"method": "grpo"}))["grpo"]
    problems = _problems(
        _write(
            tmp_path, {"method": "grpo", "grpo": {"rewards": ["json_valid"], "num_generations": 3}, "training": {"batch_size": 4}}
        )
    )
    assert "multiple of num_generations" in problems["grpo"]


def test_reward_specs_are_checked(tmp_path):
    path = _write(
        tmp_path,
        {
            "method": "grpo",
            "grpo": {
                "rewards": [
                    "not_a_reward",
                    {"type": "regex"},
                    {"type": "regex", "pattern": "("},
                    {"type": "json_schema_valid"},
                ]
            },
        },
    )
    problems = _problems(path)
    assert "grpo.rewards.0.type" in problems
    assert any("needs `pattern`" in m for m in problems.values()) and any("regular expression" in m for m in problems.values())
    assert any("json_schema" in m for m in problems.values())
    # importability is checked once the specs themselves are well-formed
    missing = _problems(_write(tmp_path, {"method": "grpo", "grpo": {"rewards": ["nowhere_module_xyz:f"]}}))
    assert "nowhere_module_xyz" in missing["grpo"]


def test_reward_schema_file_is_inlined(tmp_path):
    (tmp_path / "s.json").write_text('{"type": "object"}')
    recipe = load_recipe(
        _write(tmp_path, {"method": "grpo", "grpo": {"rewards": [{"type": "json_schema_valid", "json_schema": "s.json"}]}})
    )
    assert recipe.grpo.rewards[0].json_schema == {"type": "object"}


def test_distill_needs_a_teacher(tmp_path):
    assert "teacher" in _problems(_write(tmp_path, {"method": "distill"}))["distill"]


def test_hybrid_needs_lora_or_dora(tmp_path):
    problems = _problems(_write(tmp_path, {"adapter": {"type": "full"}, "training": {"unfreeze_top_layers": 2}}))
    assert "lora or dora" in problems["training"]


def test_qlora_without_bitsandbytes_is_a_field_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert "bitsandbytes" in _problems(_write(tmp_path, {"adapter": {"type": "qlora"}}))["adapter"]


def test_unknown_method_and_adapter_are_listed_together(tmp_path):
    problems = _problems(_write(tmp_path, {"method": "ppo", "adapter": {"type": "ia3"}}))
    assert {"method", "adapter.type"} <= set(problems)
