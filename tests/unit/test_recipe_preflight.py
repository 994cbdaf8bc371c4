"""The recipe schema reads only the values it is given; preflight (tunesmith.preflight) checks the world after it,
reporting every problem with its field path, and completes the recipe (graders file read, reward schema inlined)."""

from __future__ import annotations

import builtins
import importlib.util
import json
import pathlib
from pathlib import Path

import pytest
import yaml

from tunesmith.config import Recipe, load_recipe, recipe_from_dict
from tunesmith.errors import RecipeError
from tunesmith.preflight import preflight

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _everything(tmp_path: Path) -> dict:
    """A recipe naming every kind of path and extra preflight looks at (none of them exists)."""
    return {
        "method": "grpo",
        "data": {"train": ["t.jsonl", "u.jsonl"], "eval": "e.jsonl", "tools": "tools.json"},
        "adapter": {"type": "qlora"},
        "training": {"report_to": ["tensorboard", "mlflow"], "batch_size": 4},
        "eval": {"graders": "graders.json"},
        "rag": {"index": "index"},
        "monitor": {"reward_model": "reward-run"},
        "grpo": {
            "rewards": [
                "run:reward-run",
                {"type": "json_schema_valid", "json_schema": "schema.json"},
                "my_rewards:score",
                {"type": "grader", "grader": "has_sum"},
            ]
        },
        "distill": {"teacher": "teacher-run"},
    }


def test_validating_the_schema_touches_no_file_and_imports_nothing(monkeypatch, tmp_path):
    """Every shipped recipe (dpo, grpo with a schema file, distill, reward, qlora...) and one naming every path and
    extra validate without a single file check, file read or package look-up."""
    import jinja2  # noqa: F401  (imported by a rule: loaded before the file functions are taken away)

    import tunesmith.rag.prompt  # noqa: F401

    recipes = [(yaml.safe_load(p.read_text()), CONFIGS) for p in sorted(CONFIGS.glob("*.yaml"))]
    assert {r["method"] for r, _ in recipes} >= {"sft", "dpo", "grpo", "distill", "reward"}
    everything = _everything(tmp_path)
    everything["eval"]["graders"] = [{"type": "string_check", "name": "has_sum", "input": "{{sample.output_text}}",
                                      "reference": "5", "operation": "like"}]  # fmt: skip
    recipes.append((everything, tmp_path))

    def refused(*args, **kwargs):
        raise AssertionError("file I/O while validating the recipe schema")

    validated, failures = [], []
    with monkeypatch.context() as patch:  # undone before pytest itself looks at a file again
        for name in ("exists", "is_dir", "is_file", "read_text", "read_bytes", "open", "stat"):
            patch.setattr(pathlib.Path, name, refused)
        patch.setattr(builtins, "open", refused)
        patch.setattr(importlib.util, "find_spec", refused)
        for data, base in recipes:
            try:
                validated.append(Recipe.model_validate(data, context={"base_dir": str(base)}))
            except Exception as exc:  # a validator touched a file: pydantic reports the AssertionError in its field
                failures.append(f"{data.get('name', data['method'])}: {exc}")
    assert not failures, "\n".join(failures)
    assert [r.method for r in validated] == [d["method"] for d, _ in recipes]
    assert all(Path(r.data.train[0]).is_absolute() for r in validated)
    grpo = Recipe.model_validate(everything, context={"base_dir": str(tmp_path)})
    assert grpo.grpo.rewards[0].run == str(tmp_path / "reward-run")  # paths are made absolute, without a look
    assert grpo.grpo.rewards[1].json_schema == str(tmp_path / "schema.json")  # read by preflight


def test_preflight_reports_every_missing_file_and_package_with_its_field(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("bitsandbytes", "mlflow") else real(name, *a)
    )
    (tmp_path / "t.jsonl").write_text('{"prompt": "a"}\n')
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_everything(tmp_path)))
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "r.yaml")
    problems = dict(exc.value.problems)
    for where in ("data.train.1", "data.eval", "data.tools", "eval.graders", "rag.index", "monitor.reward_model"):
        assert problems[where].startswith("file not found: ") and str(tmp_path) in problems[where], where
    assert "data.train.0" not in problems  # it exists
    assert "bitsandbytes" in problems["adapter"] and "pip install 'tunesmith[qlora]'" in problems["adapter"]
    assert problems["training.report_to"].startswith("mlflow not installed")  # tensorboard is (or the message names it)
    grpo = [msg for where, msg in exc.value.problems if where == "grpo"]
    assert any("reward model run not found" in m for m in grpo) and any("reward schema" in m for m in grpo)
    assert any("my_rewards" in m and "not importable" in m for m in grpo)
    assert "r.yaml" in str(exc.value)  # the recipe file is named


def test_preflight_completes_a_copy_of_the_recipe(tmp_path):
    """A graders file is read once and carried in the recipe (run.yaml), a schema file inlined, a reward module and a
    teacher folder next to the recipe made absolute; the recipe handed in is left as it was."""
    (tmp_path / "t.jsonl").write_text('{"prompt": "a"}\n')
    graders = [
        {"type": "string_check", "name": "has_sum", "input": "{{sample.output_text}}", "reference": "5", "operation": "like"}
    ]
    (tmp_path / "graders.json").write_text(json.dumps(graders))
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    (tmp_path / "my_rewards.py").write_text("def score(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    rewards = [
        {"type": "json_schema_valid", "json_schema": "schema.json"},
        "my_rewards:score",
        {"type": "grader", "grader": "has_sum"},
    ]
    values = {"method": "grpo", "data": {"train": ["t.jsonl"]}, "eval": {"graders": "graders.json"}, "grpo": {"rewards": rewards}}
    schema_only = recipe_from_dict(values, tmp_path, check_files=False)
    assert schema_only.eval.graders == str(tmp_path / "graders.json")
    done = preflight(schema_only, tmp_path)
    assert done.eval.graders[0]["name"] == "has_sum" and done.grpo.rewards[0].json_schema == {"type": "object"}
    assert done.grpo.rewards[1].function == f"{tmp_path / 'my_rewards.py'}:score"
    assert schema_only.eval.graders == str(tmp_path / "graders.json")  # unchanged
    assert recipe_from_dict(values, tmp_path).model_dump() == done.model_dump()  # what load_recipe returns
    (tmp_path / "teacher").mkdir()
    distill = {"method": "distill", "data": {"train": ["t.jsonl"]}, "distill": {"teacher": "teacher"}}
    assert recipe_from_dict(distill, tmp_path).distill.teacher == str(tmp_path / "teacher")
    assert recipe_from_dict(distill, tmp_path, check_files=False).distill.teacher == "teacher"


def test_a_graders_file_naming_no_such_grader_fails_preflight(tmp_path):
    """A `grader` reward is checked against the graders file once preflight has read it."""
    (tmp_path / "t.jsonl").write_text('{"prompt": "a"}\n')
    (tmp_path / "graders.json").write_text(
        '[{"type": "string_check", "name": "other", "input": "x", "reference": "y", "operation": "eq"}]'
    )
    values = {"method": "grpo", "data": {"train": ["t.jsonl"]}, "eval": {"graders": "graders.json"},
              "grpo": {"rewards": [{"type": "grader", "grader": "has_sum"}]}}  # fmt: skip
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(values, tmp_path)
    assert ("grpo", "reward grader `has_sum` is not in eval.graders (it has: other)") in exc.value.problems
