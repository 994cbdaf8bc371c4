"""`tunesmith sweep` on the tiny model: 4 trials within a stated budget, each a sealed run scored by `tunesmith eval`'s
own report; the winner is the trial those reports rank first; a killed sweep continues; the budget and the planner
skip what cannot fit, with the reason."""

from __future__ import annotations

import json
import sqlite3

import pytest
from test_nothing_lost import cli  # the real CLI: exit code and output, asserting no traceback

from tunesmith.records import read_eval_report
from tunesmith.run import load_run

BUDGET = "20m"  # the stated budget of the 4-trial sweep (the sweep charges it every trial's wall time)
GRID = ["--set-grid", "training.learning_rate=1e-4,2e-2", "--set-grid", "adapter.r=2,4"]


def sweep(recipe, out, *extra, metric="token_f1"):
    return cli("sweep", recipe, *GRID, "--metric", metric, "--out", out, *extra)


def results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def test_a_four_trial_sweep_picks_the_trial_its_eval_reports_rank_first(tiny_recipe, tmp_path):
    recipe = tiny_recipe(eval={"gates": {"exact_match": ">=0"}, "checks": []})
    out = tmp_path / "sweep"
    # ranked by the held-out reference loss (lower is better): on the tiny model every trial gets its own value
    code, text = sweep(recipe, out, "--budget", BUDGET, "--no-prune", metric="eval_loss")
    assert code == 0, text
    got = results(out)
    assert [t["status"] for t in got["trials"]] == ["complete"] * 4
    assert got["used_s"] <= 20 * 60 and got["spec"]["budget_s"] == 20 * 60  # within the stated budget
    # every trial is a sealed run with tunesmith eval's own report; the winner is the best by those reports
    value = {}
    for t in got["trials"]:
        run = load_run(t["run_dir"])
        assert run.manifest is not None and run.dir.parent == out / "trials"
        report = read_eval_report(run.dir / "eval" / "report.json")
        value[t["trial"]] = report.summary["tuned"]["eval_loss"]
        assert t["value"] == pytest.approx(value[t["trial"]])
        assert (
            dict(zip(("training.learning_rate", "adapter.r"), (run.recipe.training.learning_rate, run.recipe.adapter.r)))
            == t["params"]
        )
    assert len(set(value.values())) == 4  # four different values: the pick below can be wrong
    assert value[got["winner"]] == min(value.values()) and got["winner_passes_gates"]
    # the table (80 columns), the chart and the winning recipe
    table = (out / "results.txt").read_text()
    assert all(len(line) <= 80 for line in table.splitlines()) and f"winner: trial {got['winner']}" in table
    assert "<svg" in (out / "chart.html").read_text() and (out / "chart.png").stat().st_size > 0
    from tunesmith.config import load_recipe

    winner = load_recipe(out / "best-recipe.yaml", check_files=False)
    params = next(t["params"] for t in got["trials"] if t["trial"] == got["winner"])
    assert (winner.training.learning_rate, winner.adapter.r) == (params["training.learning_rate"], params["adapter.r"])
    assert f"winner: trial {got['winner']}" in text
    # the same command again: nothing re-runs, the same answer
    code, again = sweep(recipe, out, "--budget", BUDGET, "--no-prune", metric="eval_loss")
    assert code == 0 and results(out)["winner"] == got["winner"] and "trial 0:" not in again


def test_a_killed_trial_is_run_again_and_counted_once(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    out = tmp_path / "sweep"
    assert sweep(recipe, out, "--trials", "1", "--no-prune")[0] == 0
    first = results(out)
    [done] = [t for t in first["trials"] if t["status"] == "complete"]
    assert sum(t["status"] == "skipped" for t in first["trials"]) == 3 and "--trials 1 reached" in json.dumps(first)
    # as a kill during its eval leaves it: the trial still RUNNING in the study, its run folder without a manifest
    # (checkpoints kept): the next sweep continues the run from its last checkpoint and evaluates it
    db = sqlite3.connect(out / "optuna.db")
    db.execute("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL")
    db.commit()
    db.close()
    folder = out / "trials" / f"trial-{done['trial']:02d}"
    for name in ("manifest.json", "eval"):
        path = folder / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    assert (folder / "checkpoints").is_dir()
    code, text = sweep(recipe, out, "--trials", "1", "--no-prune")
    assert code == 0, text
    again = results(out)
    assert [t["status"] for t in again["trials"] if t["trial"] == done["trial"]] == ["complete"]
    assert sum(t["status"] == "complete" for t in again["trials"]) == 1  # counted once
    assert load_run(out / "trials" / f"trial-{done['trial']:02d}").manifest is not None


def test_trials_the_budget_or_memory_cannot_hold_are_skipped_with_the_reason(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    out = tmp_path / "sweep"
    # one step, or a hundred million: the planner says the second cannot fit any budget of an hour
    code, text = cli(
        "sweep", recipe, "--set-grid", "training.max_steps=1,100000000", "--metric", "token_f1", "--budget", "1h", "--out", out
    )
    assert code == 0, text
    by_steps = {t["params"]["training.max_steps"]: t for t in results(out)["trials"]}
    assert by_steps[1]["status"] == "complete"
    assert by_steps[100000000]["status"] == "skipped" and "of the 60.0 min budget left" in by_steps[100000000]["reason"]
    assert "skipped: needs ~" in text


def test_a_different_sweep_in_the_same_folder_and_bad_grids_are_refused(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    out = tmp_path / "sweep"
    code, text = cli("sweep", recipe, "--set-grid", "training.learning_rate", "--out", out)
    assert code == 1 and "is not section.field=v1,v2" in text and not out.exists()
    code, text = cli("sweep", recipe, "--set-grid", "adapter.r=0,4", "--out", out)
    assert code == 1 and "adapter.r" in text and not out.exists()
    code, text = cli("sweep", recipe, "--set-grid", "adapter.r=2", "--metric", "nonsense", "--out", out)
    assert code == 1 and "unknown metric 'nonsense'" in text
    assert cli("sweep", recipe, "--set-grid", "training.max_steps=1", "--metric", "token_f1", "--out", out)[0] == 0
    code, text = cli("sweep", recipe, "--set-grid", "training.max_steps=2", "--metric", "token_f1", "--out", out)
    assert code == 1 and "holds another sweep (its grid differs)" in text


def test_a_clearly_losing_trial_is_pruned_at_a_checkpoint(tiny_recipe, tmp_path):
    """Two trials that learn (lr 1e-2) and two that cannot (lr 1e-9), ranked by eval_loss: after the first two,
    a trial that is behind their median at its first checkpoint (step 2 of 4) stops there."""
    recipe = tiny_recipe()
    out = tmp_path / "sweep"
    grid = ["--set-grid", "training.learning_rate=1e-2,1e-9", "--set-grid", "adapter.r=2,4"]
    code, text = cli("sweep", recipe, *grid, "--metric", "eval_loss", "--out", out)
    assert code == 0, text
    trials = {t["trial"]: t for t in results(out)["trials"]}
    pruned = [t for t in trials.values() if t["status"] == "pruned"]
    assert pruned and all(t["params"]["training.learning_rate"] == 1e-9 and t["pruned_at"] == 2 for t in pruned)
    for t in pruned:  # a sealed run of the steps it made, not evaluated
        run = load_run(t["run_dir"])
        assert run.manifest.figures.global_step == 2 and not (run.dir / "eval").exists()
    winner = trials[results(out)["winner"]]
    assert winner["params"]["training.learning_rate"] == 1e-2 and winner["status"] == "complete"
    assert "pruned" in (out / "results.txt").read_text()


def test_a_trial_stopped_by_a_signal_is_interrupted_not_failed_and_continues(tiny_recipe, tmp_path, monkeypatch):
    from tunesmith.sweep import trials
    from tunesmith.train.faults import TrainingInterrupted

    recipe = tiny_recipe()
    out = tmp_path / "sweep"

    def stopped(recipe, pruning):
        raise TrainingInterrupted("SIGTERM received: stopped after step 2 and saved checkpoint-2")

    with monkeypatch.context() as m:
        m.setattr(trials, "train_trial", stopped)
        code, text = cli("sweep", recipe, "--set-grid", "training.max_steps=2", "--metric", "token_f1", "--out", out)
    assert code == 75 and "SIGTERM received" in text  # the user stopped it: said so, with the requeue exit code
    code, text = cli("sweep", recipe, "--set-grid", "training.max_steps=2", "--metric", "token_f1", "--out", out)
    assert code == 0, text
    assert [t["status"] for t in results(out)["trials"]] == ["complete"]
