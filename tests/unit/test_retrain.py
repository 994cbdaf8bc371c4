"""`tunesmith retrain`: old + new data into a new run folder, gated against the served run; the adapter link moves only
when every gate passes (tiny model)."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from helpers import chat_rows, write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.eval.gates import GATES_FAILED_EXIT
from tunesmith.monitor.retrain import next_run_dir, read_promotion, retrain
from tunesmith.run import load_run


def test_retrain_refuses_when_a_gate_fails_and_promotes_when_all_pass(tiny_recipe, tmp_path):
    from tunesmith.train import sft

    quick = {"max_steps": 2, "save_steps": 2}
    old = sft.run(load_recipe(tiny_recipe(training=quick))).dir
    old_manifest = (old / "manifest.json").read_bytes()
    add = write_jsonl(tmp_path / "feedback.jsonl", chat_rows(8, seed=7))
    serve = tmp_path / "serve"

    failing = tiny_recipe(training=quick, eval={"gates": {"exact_match": ">=1.5"}, "checks": []})
    res = CliRunner().invoke(app, ["retrain", str(failing), "--add", str(add), "--serve-dir", str(serve), "--name", "prod"])
    assert res.exit_code == GATES_FAILED_EXIT, res.output
    assert "FAIL exact_match" in res.output and "not promoted" in res.output
    assert not (serve / "adapters" / "prod").exists()
    refused = load_run(old.with_name("tiny-r2"))
    assert str(add) in refused.recipe.data.train and len(refused.recipe.data.train) == 2  # trained on old + new
    assert (old / "manifest.json").read_bytes() == old_manifest  # the served run is never touched

    passing = tiny_recipe(
        training=quick, eval={"gates": {"json_valid": ">=0"}, "checks": ["inputs_unchanged"]}, monitor={"max_regression": 1.0}
    )
    done = retrain(passing, add, serve, "prod")
    assert done.promoted and done.new_run == old.with_name("tiny-r3") and done.served_run == old
    assert [g.name for g in done.gates] == ["inputs_unchanged", "json_valid", "beats_served"]
    link = serve / "adapters" / "prod"
    assert link.is_symlink() and os.path.realpath(link) == str(done.new_run)
    record = read_promotion(serve / "adapters" / "prod.promotion.json")
    assert record.previous == str(old) and record.run == str(done.new_run) and all(g.passed for g in record.gates)
    served = next(g for g in done.gates if g.name == "beats_served")
    assert served.value is not None and "served (tiny)" in served.detail


def test_a_folder_in_place_of_the_link_is_refused_before_training(tiny_recipe, tmp_path):
    import pytest

    from tunesmith.errors import RunError
    from tunesmith.train import sft

    quick = {"max_steps": 1, "save_steps": 1}
    old = sft.run(load_recipe(tiny_recipe(training=quick))).dir
    serve = tmp_path / "serve"
    (serve / "adapters" / "prod").mkdir(parents=True)  # a real folder someone put there: never replaced
    (serve / ".tunesmith-serve").touch()
    add = write_jsonl(tmp_path / "more.jsonl", chat_rows(4, seed=9))
    with pytest.raises(RunError, match="not an adapter link"):
        retrain(tiny_recipe(training=quick), add, serve, "prod")
    assert (serve / "adapters" / "prod").is_dir() and not old.with_name("tiny-r2").exists()


def test_next_run_dir_skips_existing_versions(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run-r2").mkdir()
    assert next_run_dir(tmp_path / "run") == tmp_path / "run-r3"


def test_the_next_recipe_keeps_earlier_additions_of_the_served_run(tiny_recipe, tmp_path):
    from tunesmith.monitor.retrain import next_recipe

    path = tiny_recipe()
    earlier = write_jsonl(tmp_path / "week1.jsonl", chat_rows(4, seed=3))
    add = write_jsonl(tmp_path / "week2.jsonl", chat_rows(4, seed=4))
    recipe = next_recipe(path, add, [str(tmp_path / "train.jsonl"), str(earlier)])
    assert recipe.data.train == [str(tmp_path / "train.jsonl"), str(earlier), str(add)]
    assert recipe.run_dir == tmp_path / "runs" / "tiny-r2" and recipe.name == "tiny-r2"
