"""One held-out set: for every method on the bundled data (configs/), eval, the ladder (before and after training),
checkpoint selection, retrain's comparison, serve --check, the studio's review and chat all see the rows the run
saved, none of them a row the trainer was given; the ladder prints the figures `tunesmith eval` prints (tiny model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.data.split import split_file
from tunesmith.data.template import prompt_messages
from tunesmith.run import load_run
from tunesmith.train.methods import held_out_examples

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {"sft": "sft-lora.yaml", "dpo": "dpo.yaml", "grpo": "grpo.yaml", "distill": "distill.yaml"}
# Words the eval report uses for each method's reference answers.
REFERENCE_WORD = {"sft": "assistant turn", "dpo": "chosen", "grpo": "reference", "distill": "teacher"}


def _question(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _overrides(method: str, tiny: Path) -> list[str]:
    quick = [
        f"model.base={tiny}",
        "training.max_steps=1",
        "training.save_steps=1",
        "training.logging_steps=1",
        "training.report_to=[]",
        "eval.max_new_tokens=4",
        "eval.batch_size=4",
        "eval.select_checkpoint=exact_match",
        "eval.select_examples=3",
        "ladder.rungs=[base,tuned]",
    ]
    return quick + {
        "grpo": ["grpo.max_completion_length=4"],
        "distill": [f"distill.teacher={tiny}", "distill.max_new_tokens=4"],
    }.get(method, [])


def _spy_training_rows(method: str, monkeypatch) -> list[str]:
    """Record the questions of every row handed to the trainer, through the functions the method modules call."""
    from tunesmith.data import dataset
    from tunesmith.train import dpo, grpo

    seen: list[str] = []

    def wrap(module, name, question):
        original = getattr(module, name)

        def spy(*args, **kwargs):
            train, evaluation = original(*args, **kwargs)
            seen.extend(question(x) for x in train)
            return train, evaluation

        monkeypatch.setattr(module, name, spy)

    wrap(dataset, "recipe_examples", lambda e: _question(e.messages))  # sft, and distill's student
    wrap(dpo, "recipe_rows", lambda r: _question(r["prompt"]))
    wrap(grpo, "recipe_rows", lambda r: _question(r["prompt"]))
    return seen


@pytest.mark.parametrize("method", list(RECIPES))
def test_every_consumer_scores_the_runs_own_held_out_rows(method, tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.chat import ChatSession
    from tunesmith.eval.ladder import ladder_inputs, run_ladder
    from tunesmith.monitor.retrain import against_served
    from tunesmith.serve import check
    from tunesmith.studio.routes_review import conversations
    from tunesmith.train.entry import run as train
    from tunesmith.train.methods import evaluate

    shutil.copytree(CONFIGS, tmp_path / "configs")
    path = tmp_path / "configs" / RECIPES[method]
    sets = _overrides(method, tiny_model_dir)
    recipe = load_recipe(path, sets)
    before = ladder_inputs(recipe)  # no run yet: the rows its split will hold out

    trained = _spy_training_rows(method, monkeypatch)
    run = load_run(train(recipe).dir)
    held = held_out_examples(run)
    ids = [e.id for e in held]
    questions = {e.id: _question(e.messages) for e in held}
    assert trained and len(set(ids)) == len(ids) >= 3
    assert not set(questions.values()) & set(trained), "a held-out row was trained on"
    assert before.ids == ids and [_question(c) for c in before.convs] == list(questions.values())

    report = evaluate(run)
    predictions = [json.loads(x) for x in (run.dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ids and all(p["prompt"] == questions[p["id"]] for p in predictions)
    assert REFERENCE_WORD[method] in report.reference

    lad, rows = run_ladder(load_recipe(path, sets))
    assert lad.ids == [r["id"] for r in rows] == ids and lad.reference == report.reference
    assert [r["prompt"] for r in rows] == [questions[i] for i in ids]

    selection = run.manifest.checkpoint_selection
    assert selection is not None and selection.ids == ids[:3]

    from tunesmith.eval import scoring

    asked: list[list[dict]] = []
    answer = scoring.answer
    monkeypatch.setattr(
        scoring, "answer", lambda model, tok, prompts, *a, **k: asked.extend(prompts) or answer(model, tok, prompts, *a, **k)
    )
    served = against_served(run, run, report, max_regression=1.0)
    assert served.status == "pass" and [_question(c) for c in asked] == [questions[i] for i in ids]

    for seen in (check._conversations(run), conversations(run.dir)):  # serve --check, the studio's review
        assert list(seen) == ids and all(_question(c) == questions[i] for i, c in seen.items())
    first = prompt_messages(held[0].messages)
    assert ChatSession.open(str(run.dir)).system == (first[0]["content"] if first[0]["role"] == "system" else None)


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_ladder_prints_the_figures_eval_prints_on_the_bundled_recipes(method, tmp_path, tiny_model_dir):
    from tunesmith.eval.ladder_report import read_ladder_report
    from tunesmith.records import read_eval_report

    shutil.copytree(CONFIGS, tmp_path / "configs")
    path = tmp_path / "configs" / RECIPES[method]
    sets = [s for s in _overrides(method, tiny_model_dir) if not s.startswith("eval.select")]
    args = [a for s in sets for a in ("--set", s)]
    runner = CliRunner()
    ladder_before = runner.invoke(app, ["ladder", str(path), *args, "--out", str(tmp_path / "before")])
    assert ladder_before.exit_code == 0, ladder_before.output  # grpo prompt-only data: no "bad row(s)"
    assert runner.invoke(app, ["train", str(path), *args]).exit_code == 0
    run_dir = load_recipe(path, sets).run_dir
    evaluated = runner.invoke(app, ["eval", str(run_dir)])
    laddered = runner.invoke(app, ["ladder", str(path), *args])
    assert evaluated.exit_code == 0 and laddered.exit_code == 0, evaluated.output + laddered.output
    report = read_eval_report(run_dir / "eval" / "report.json")
    lad = read_ladder_report(run_dir.with_name(run_dir.name + "-ladder") / "ladder.json")
    assert lad.n_examples == report.n_examples and lad.reference == report.reference
    assert read_ladder_report(tmp_path / "before" / "ladder.json").ids == lad.ids
    for side in ("base", "tuned"):
        rung = lad.rung(side)
        assert rung is not None
        shared = set(rung.metrics) & set(report.summary[side])
        assert {"exact_match", "token_f1", "bleu"} <= shared and (method != "grpo" or "reward" in shared)
        for metric in shared:
            assert rung.metrics[metric] == pytest.approx(report.summary[side][metric]), (side, metric)


def test_data_split_holds_out_the_rows_training_holds_out(tmp_path):
    """`tunesmith data split` and a recipe's eval_fraction order rows the same way: the same rows are held out."""
    from tunesmith.config import recipe_from_dict
    from tunesmith.data.dataset import split_examples

    rows = [json.loads(x) for x in (CONFIGS / "data" / "tickets-sft.jsonl").read_text().splitlines()]
    src = write_jsonl(tmp_path / "tickets.jsonl", rows)
    res = split_file(src, 0.2, seed=7, near=False)
    recipe = recipe_from_dict({"data": {"train": [str(src)], "eval_fraction": 0.2}, "training": {"seed": 7}}, tmp_path)
    _, evaluation = split_examples(recipe.data, 7)
    split_ids = {json.loads(x)["id"] for x in res.eval.read_text().splitlines()}
    assert split_ids == {e.id for e in evaluation} and len(split_ids) == 24


def test_prompt_only_rows_are_scored_by_the_rewards_and_the_report_says_so(tmp_path, tiny_model_dir):
    """GRPO rows without any answer: no reference metric is computed against "", the rewards are the score."""
    from tunesmith.eval.ladder import run_ladder

    shutil.copytree(CONFIGS, tmp_path / "configs")
    data = tmp_path / "configs" / "data" / "tickets-prompts.jsonl"
    rows = [{"prompt": json.loads(x)["prompt"]} for x in data.read_text().splitlines()]
    write_jsonl(data, rows)
    sets = [*_overrides("grpo", tiny_model_dir), "ladder.rungs=[base]", "grpo.rewards=[json_valid]"]
    report, _ = run_ladder(load_recipe(tmp_path / "configs" / "grpo.yaml", sets), max_examples=3)
    base = report.rung("base")
    assert base is not None and base.status == "ok" and set(base.metrics) == {"reward"}
    assert report.primary_metric == "reward" and report.reference.startswith("none") and "rewards" in report.reference
