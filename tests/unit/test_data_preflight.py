"""`tunesmith train` runs the data check first; a run notices when its chat template was edited."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import load_recipe
from tunesmith.data.audit import preflight
from tunesmith.errors import DataError
from tunesmith.train import sft


def _add_rows(recipe_path, rows):
    train = recipe_path.parent / "train.jsonl"
    with open(train, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return train


TWO_USERS = {
    "messages": [{"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]
}


def test_train_refuses_blocking_errors_before_loading_a_model(tiny_recipe, monkeypatch):
    path = tiny_recipe()
    train = _add_rows(path, [TWO_USERS])
    from tunesmith import models

    def no_model(*a, **k):
        raise AssertionError("the model must not load when the data check fails")

    monkeypatch.setattr(models, "load_model", no_model)
    with pytest.raises(DataError) as exc:
        sft.run(load_recipe(path))
    text = str(exc.value)
    assert "1 blocking error" in text and f"{train}:25 message 1: [consecutive_user_turns]" in text and "--force" in text


def test_force_trains_anyway(tiny_recipe):
    path = tiny_recipe()
    _add_rows(path, [TWO_USERS])
    run = sft.run(load_recipe(path), force=True)
    assert run.manifest.tokens.train.kept == 25


def test_preflight_passes_clean_recipe_with_warnings_only(tiny_recipe, tiny_model_dir):
    from tunesmith import models

    cfg = load_recipe(tiny_recipe())
    report = preflight(cfg, sft.METHOD, models.load_tokenizer(str(tiny_model_dir)))
    assert not report.errors and {f.code for f in report.warnings} <= {"few_examples", "exact_duplicate", "eval_overlap"}
    assert report.stats["tokens"]["max_length"] == 128


def test_edited_template_triggers_the_warning(tiny_recipe):
    from tunesmith.chat import ChatSession
    from tunesmith.loader import template_warning
    from tunesmith.run import load_run

    run = sft.run(load_recipe(tiny_recipe()))
    assert ChatSession.open(str(run.dir)).warning is None
    template = run.adapter_dir / "chat_template.jinja"
    assert template.exists()
    template.write_text(template.read_text() + "{# edited after training #}")
    session = ChatSession.open(str(run.dir))
    assert session.warning and "chat template differs from training" in session.warning
    assert template_warning(load_run(run.dir), session.tokenizer) == session.warning
