"""`tunesmith retrain`: old + new data into a new run folder, gated against the served run; the adapter link moves only
when every gate passes (tiny model)."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_a_bad_name_is_refused_before_anything_trains(tiny_recipe, tmp_path):
    import pytest

    from tunesmith.errors import ModelError
    from tunesmith.train import sft

    quick = {"max_steps": 1, "save_steps": 1}
    path = tiny_recipe(training=quick, eval={"gates": {"json_valid": ">=0"}, "checks": []}, monitor={"max_regression": 1.0})
    old = sft.run(load_recipe(path)).dir
    add = write_jsonl(tmp_path / "more.jsonl", chat_rows(4, seed=9))
    with pytest.raises(ModelError, match="invalid adapter name"):
        retrain(path, add, tmp_path / "serve", "bad name")
    assert not old.with_name("tiny-r2").exists() and not (tmp_path / "serve").exists()
    res = CliRunner().invoke(
        app, ["retrain", str(path), "--add", str(add), "--serve-dir", str(tmp_path / "serve"), "--name", "../x"]
    )
    assert res.exit_code != 0 and "invalid adapter name" in res.output and not old.with_name("tiny-r2").exists()


def _runs(tmp_path):
    runs = [tmp_path / name for name in ("run-a", "run-b")]
    for run in runs:
        run.mkdir()
    return runs


def test_a_crash_after_the_link_swap_leaves_a_record_naming_the_served_run(tmp_path, monkeypatch):
    from tunesmith.monitor import retrain as module
    from tunesmith.monitor.retrain import promote

    a, b = _runs(tmp_path)
    serve, record = tmp_path / "serve", tmp_path / "serve" / "adapters" / "prod.promotion.json"
    promote(serve, "prod", a, tmp_path / "run-0", tmp_path / "add.jsonl", [])
    assert read_promotion(record).run == str(a)

    swapped, real_replace, real_write = [], os.replace, module.write_text_atomic

    def replace(src, dst):
        real_replace(src, dst)
        swapped.append(Path(dst) == serve / "adapters" / "prod")

    def killed_after_the_swap(path, text):
        if any(swapped):  # the process dies at its first write after the link moved
            raise KeyboardInterrupt("killed")
        return real_write(path, text)

    monkeypatch.setattr(module.os, "replace", replace)
    monkeypatch.setattr(module, "write_text_atomic", killed_after_the_swap)
    try:
        promote(serve, "prod", b, a, tmp_path / "add.jsonl", [])
    except KeyboardInterrupt:
        pass
    assert os.path.realpath(serve / "adapters" / "prod") == str(b)  # the swap happened
    settled = read_promotion(record)
    assert settled.run == str(b) and settled.previous == str(a) and settled.status == "promoted"


def test_a_crash_before_the_link_swap_leaves_a_record_naming_the_run_still_served(tmp_path, monkeypatch):
    from tunesmith.monitor import retrain as module
    from tunesmith.monitor.retrain import promote

    a, b = _runs(tmp_path)
    serve, record = tmp_path / "serve", tmp_path / "serve" / "adapters" / "prod.promotion.json"
    promote(serve, "prod", a, tmp_path / "run-0", tmp_path / "add.jsonl", [])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(module.os, "symlink", killed)  # after the "pending" record, before the link moves
    try:
        promote(serve, "prod", b, a, tmp_path / "add.jsonl", [])
    except KeyboardInterrupt:
        pass
    assert os.path.realpath(serve / "adapters" / "prod") == str(a)  # nothing moved
    settled = read_promotion(record)
    assert settled.run == str(a) and settled.status == "pending" and settled.gates == []
