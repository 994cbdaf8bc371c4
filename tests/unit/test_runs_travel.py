"""Runs that travel: a finished run folder is self-contained (eval, merge, chat after the data moved), verified by
hashes when its inputs are used again, and a merge appears only once it has been checked."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from helpers import chat_rows, write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_recipe, recipe_from_dict
from tunesmith.errors import RecipeError, RunError
from tunesmith.run import HELD_OUT, changed_inputs, load_run
from tunesmith.train import sft
from tunesmith.train.methods import held_out_examples


def _train(path):
    return sft.run(load_recipe(path))


def test_run_moved_without_its_data_still_evals_merges_and_chats(tiny_recipe, tmp_path):
    from tunesmith.chat import ChatSession
    from tunesmith.export.merge import merge
    from tunesmith.train.methods import evaluate

    path = tiny_recipe(training={"max_steps": 2, "save_steps": 2})
    trained = _train(path)
    held = trained.manifest.held_out
    assert held is not None and held.path == HELD_OUT and held.rows == 6  # the recipe's eval file, copied
    # Another place, no training data: the folder alone must be enough (same base model available).
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(trained.dir, moved)
    shutil.rmtree(trained.dir)
    for name in ("train.jsonl", "eval.jsonl", "recipe.yaml"):
        (tmp_path / name).unlink()

    run = load_run(moved)
    assert [e.messages for e in held_out_examples(run)] == [r["messages"] for r in chat_rows(6, seed=2)]
    assert changed_inputs(run) == []
    report = evaluate(run)
    assert report.n_examples == 6 and not [w for w in report.warnings if "changed since training" in w]
    assert (moved / "eval" / "report.json").exists()
    result = merge(run, tmp_path / "merged", n_check=2, max_new_tokens=4)
    assert result["identical"] == 2
    session = ChatSession.open(str(moved))
    assert session.system == "Answer with JSON." and isinstance(session.ask("Add 1 and 2.", 4), str)


def test_changed_inputs_are_warnings_in_the_eval_report(tiny_recipe, tmp_path):
    from tunesmith.train.methods import evaluate

    run = load_run(_train(tiny_recipe(training={"max_steps": 1, "save_steps": 1})).dir)
    write_jsonl(tmp_path / "eval.jsonl", chat_rows(7, seed=2))  # the eval file changed after training
    warnings = changed_inputs(run)
    assert len(warnings) == 1 and "eval.jsonl changed since training" in warnings[0]
    report = evaluate(run, max_examples=2)
    assert report.warnings[: len(warnings)] == warnings and report.n_examples == 2  # the run's own rows are used
    (run.dir / HELD_OUT).write_text((run.dir / HELD_OUT).read_text().replace("Add", "Sum"))
    assert any("held-out rows were edited" in w for w in changed_inputs(run))


def test_load_run_validates_the_schema_not_the_environment(tiny_recipe, tmp_path):
    values = {
        "method": "dpo",
        "data": {"train": ["gone.jsonl"], "eval": "gone-too.jsonl"},
        "adapter": {"type": "lora"},
        "training": {"report_to": []},
    }
    recipe = recipe_from_dict(values, tmp_path, check_files=False)  # dpo data that cannot be read: fine when reading a run
    assert recipe.data.train == [str(tmp_path / "gone.jsonl")]
    with pytest.raises(RecipeError, match="file not found"):
        recipe_from_dict(values, tmp_path)  # the same recipe about to train: its files must exist
    with pytest.raises(RecipeError, match="training.nope"):
        recipe_from_dict({**values, "training": {"nope": 1}}, tmp_path, check_files=False)  # the schema still holds


def test_missing_base_model_is_one_clear_error(tiny_recipe, tmp_path):
    run = _train(tiny_recipe(training={"max_steps": 1, "save_steps": 1}))
    manifest = json.loads((run.dir / "manifest.json").read_text())
    manifest["base_model"] = {"spec": str(tmp_path / "gone-model"), "path": str(tmp_path / "gone-model")}
    (run.dir / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(app, ["eval", str(run.dir)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "not on this machine" in out and "Traceback" not in out


def test_a_merge_that_fails_its_check_leaves_nothing_behind(tiny_recipe, tmp_path, monkeypatch):
    from tunesmith.export import merge as merge_mod

    run = load_run(_train(tiny_recipe(training={"max_steps": 1, "save_steps": 1})).dir)
    real = merge_mod._greedy_tokens
    calls = []

    def drifting(model, tokenizer, conversations, max_new_tokens, thinking):
        calls.append(1)
        out = real(model, tokenizer, conversations, max_new_tokens, thinking)
        return out if len(calls) == 1 else [ids + [0] for ids in out]  # the merged model "differs"

    monkeypatch.setattr(merge_mod, "_greedy_tokens", drifting)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RunError, match="refusing to write"):
        merge_mod.merge(run, tmp_path / "merged", n_check=1, max_new_tokens=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no merged/, no staging folder


def test_merging_a_prompt_tuning_run_is_a_clear_error(tiny_recipe, tmp_path):
    path = tiny_recipe(adapter={"type": "prompt_tuning", "num_virtual_tokens": 4}, training={"max_steps": 1, "save_steps": 1})
    run = _train(path)
    res = CliRunner().invoke(app, ["merge", str(run.dir), "--out", str(tmp_path / "merged")])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "cannot merge a prompt-tuning adapter" in out and "serve it with its base" in out.lower()
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))
    assert yaml.safe_load((run.dir / "run.yaml").read_text())["adapter"]["type"] == "prompt_tuning"


def test_eval_by_recipe_after_the_data_moved(tiny_recipe, tmp_path):
    path = tiny_recipe(training={"max_steps": 1, "save_steps": 1})
    _train(path)
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "eval.jsonl").unlink()
    res = CliRunner().invoke(app, ["eval", str(path), "--max-examples", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "tiny" / "eval" / "report.json").exists()
