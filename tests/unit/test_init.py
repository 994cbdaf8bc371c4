"""A new user's first five minutes: `init --data` writes a recipe for their data with a schedule from the data,
eval budgets come from the references (`auto`), and degenerate output (budget hit, loops) is reported."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from helpers import chat_rows, write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError
from tunesmith.eval import metrics
from tunesmith.project import eval_fraction_for, max_length_for, schedule_for


def test_schedule_follows_data_size():
    assert schedule_for(500)["epochs"] == 3 and schedule_for(5_000)["epochs"] == 2 and schedule_for(50_000)["epochs"] == 1
    for n in (20, 500, 5_000, 50_000):
        s = schedule_for(n)
        assert s["learning_rate"] == 2e-4 and 0.03 <= s["warmup_ratio"] <= 0.1 and s["max_steps"] == -1
    assert max_length_for([100, 700]) == 704 and max_length_for([10]) == 256 and max_length_for([9000]) == 4096
    assert eval_fraction_for(30) == 0.2 and eval_fraction_for(1000) == 0.1 and eval_fraction_for(100_000) * 100_000 == 200


def test_init_writes_a_recipe_for_the_users_data(tmp_path, tiny_model_dir):
    rows = chat_rows(120, seed=9)
    data = write_jsonl(tmp_path / "mine.jsonl", rows)
    res = CliRunner().invoke(app, ["init", str(tmp_path / "proj"), "--data", str(data), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    assert "format detected: 120 messages" in res.output and "audit:" in res.output and "12 rows held out" in res.output
    text = (tmp_path / "proj" / "recipe.yaml").read_text()
    assert "# Data: 120 usable rows" in text and "demo task" not in text
    recipe = load_recipe(tmp_path / "proj" / "recipe.yaml")
    assert recipe.data.train == [str(data)] and recipe.data.eval is None and recipe.data.eval_fraction == 0.1
    t = recipe.training
    assert (t.epochs, t.max_steps, t.learning_rate) == (3.0, -1, 2e-4) and 0.03 <= t.warmup_ratio <= 0.1
    assert recipe.eval.max_new_tokens == "auto" and recipe.model.base == str(tiny_model_dir)
    assert recipe.data.max_length == 256  # short rows: the floor, not the demo's 512 or the default 1024
    # init still refuses a folder holding files it did not make
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["init", str(tmp_path / "theirs"), "--data", str(data), "--model", str(tiny_model_dir)])
    assert res.exit_code != 0 and (tmp_path / "theirs" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "theirs" / "recipe.yaml").exists()


def test_init_with_eval_file_and_preference_data(tmp_path, tiny_model_dir):
    pairs = [
        {"prompt": r["messages"][:2], "chosen": [r["messages"][2]], "rejected": [{"role": "assistant", "content": "?"}]}
        for r in chat_rows(30, seed=2)
    ]
    train, evals = write_jsonl(tmp_path / "p.jsonl", pairs[:24]), write_jsonl(tmp_path / "e.jsonl", pairs[24:])
    res = CliRunner().invoke(
        app,
        [
            "init",
            str(tmp_path / "p"),
            "--data",
            str(train),
            "--eval",
            str(evals),
            "--model",
            str(tiny_model_dir),
            "--method",
            "dpo",
        ],
    )
    assert res.exit_code == 0, res.output
    recipe = load_recipe(tmp_path / "p" / "recipe.yaml")
    assert recipe.method == "dpo" and recipe.data.eval == str(evals) and "your eval file (6 rows)" in res.output
    # chat rows are not pairs: init refuses instead of writing a recipe that cannot load
    chat = write_jsonl(tmp_path / "c.jsonl", chat_rows(12))
    res = CliRunner().invoke(
        app, ["init", str(tmp_path / "c"), "--data", str(chat), "--model", str(tiny_model_dir), "--method", "dpo"]
    )
    assert res.exit_code != 0 and "preference pairs" in res.output


def test_max_steps_zero_is_a_recipe_error(tiny_recipe):
    for bad in (0, -2):
        with pytest.raises(RecipeError, match="training.max_steps"):
            load_recipe(tiny_recipe(training={"max_steps": bad}))
    assert load_recipe(tiny_recipe(training={"max_steps": -1})).training.max_steps == -1


def test_auto_budget_comes_from_the_longest_reference(tiny_recipe, tiny_model_dir):
    from tunesmith import models
    from tunesmith.eval.budget import resolve_max_new_tokens

    tok = models.load_tokenizer(str(tiny_model_dir))
    recipe = load_recipe(tiny_recipe(eval={"max_new_tokens": "auto"}))
    refs = ["short", " ".join(["word"] * 40)]
    longest = len(tok(refs[1], add_special_tokens=False)["input_ids"])
    budget = resolve_max_new_tokens(recipe, tok, refs)
    assert budget.tokens == min(-(-longest * 5 // 4) + 16, 128) and "longest reference" in budget.source
    capped = resolve_max_new_tokens(recipe, tok, [" ".join(["word"] * 400)])
    assert capped.tokens == 128 and "capped by data.max_length 128" in capped.source
    assert resolve_max_new_tokens(load_recipe(tiny_recipe(eval={"max_new_tokens": 9})), tok, refs).tokens == 9


@pytest.mark.parametrize(
    "text,loop",
    [
        ("The answer is 42.", False),
        ('{"sum": 12}', False),
        ("yes yes", False),
        ("Step 1: add.\nStep 2: carry.\nThe answer is 7.", False),
        ("Let me think.\nLet me think.\nLet me think.", True),
        ("So the total is " + "the total is " * 6, True),
        ("a b c d " * 10, True),
        ("First we add 3 and 4 to get 7, then we multiply by 2 to get 14, and the final answer is 14.", False),
    ],
)
def test_repetition_loop_detector(text, loop):
    assert metrics.is_repetition_loop(text) is loop


def test_degeneration_shares():
    d = metrics.degeneration(["ok", "x\nx\nx", "fine"], [False, True, True])
    assert d == {"hit_budget": 2 / 3, "loop_rate": 1 / 3, "degenerate": 2 / 3}


def test_eval_reports_budget_degenerate_output_and_qlora(tiny_recipe, tmp_path, monkeypatch):
    from tunesmith.cli.evaluate import degenerate_lines
    from tunesmith.eval import compare
    from tunesmith.eval.notes import QLORA_NOTE
    from tunesmith.export.merge import merge
    from tunesmith.loader import load_run_model
    from tunesmith.train import methods
    from tunesmith.train.entry import run as train_run

    run = train_run(load_recipe(tiny_recipe(training={"max_steps": 2}, eval={"max_new_tokens": "auto", "max_examples": 3})))

    def quantized(r):  # the loader's QLoRA path needs a GPU; what eval does with its answer is tested here
        loaded = load_run_model(r)
        loaded.quantized_base = True
        return loaded

    monkeypatch.setattr(compare, "load_run_model", quantized)
    report = methods.evaluate(run)
    g = report.generation
    assert g["max_new_tokens"] > 8 and g["max_new_tokens_from"].startswith("auto: longest reference")
    assert set(report.degenerate) == {"base", "tuned"} and set(g["hit_budget"]) == {"base", "tuned"}
    # a random tiny model rambles to the budget: every output hits it, and the report says so
    assert report.degenerate["tuned"]["hit_budget"] == g["hit_budget"]["tuned"] / report.n_examples
    assert any("degenerate" in w for w in report.warnings) == (report.degenerate["tuned"]["degenerate"] >= 0.1)
    assert QLORA_NOTE in report.warnings and g["base_weights"].startswith("4-bit")
    lines = degenerate_lines(report)
    assert lines[0].startswith(f"generation budget: {g['max_new_tokens']} tokens") and len(lines) == 3
    saved = json.loads((run.dir / "eval" / "report.json").read_text())
    assert saved["degenerate"] == report.degenerate
    page = (run.dir / "eval" / "report.html").read_text()
    assert "hit the budget" in page and "4-bit NF4 base" in page and f"generation budget: {g['max_new_tokens']} tokens" in page
    preds = [json.loads(line) for line in (run.dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sum(p["hit_budget"]["tuned"] for p in preds) == g["hit_budget"]["tuned"]  # each output says whether it was cut
    # merge says which base it merged into, and that a QLoRA run is dequantized
    result = merge(run, tmp_path / "merged", n_check=1, max_new_tokens=4)
    assert result["base_note"] == "merged into the float32 base the adapter was trained on"
    run.manifest.quantized_base = True
    result = merge(run, tmp_path / "merged2", n_check=1, max_new_tokens=4)
    assert result["base_note"].startswith("dequantized") and result["lineage"]["dequantized"] is True


def test_eval_cli_prints_budget_and_degenerate_lines(tmp_path):
    from tunesmith.cli.evaluate import degenerate_lines
    from tunesmith.records import EvalReport, Judgement

    report = EvalReport(
        run="r",
        base_model="b",
        n_examples=4,
        json_mode=False,
        summary={"base": {}, "tuned": {}, "delta": {}},
        judgement=Judgement(),
        chat_template_sha256="x",
        generation={"max_new_tokens": 40, "max_new_tokens_from": "auto: longest reference 20 tokens x 1.25 + 16"},
        degenerate={
            "base": {"hit_budget": 0.0, "loop_rate": 0.0, "degenerate": 0.0},
            "tuned": {"hit_budget": 0.5, "loop_rate": 0.25, "degenerate": 0.5},
        },
    )
    lines = degenerate_lines(report)
    assert "auto: longest reference" in lines[0]
    assert "base: 0% hit the budget" in lines[1] and "ok" in lines[1]
    assert "tuned: 50% hit the budget · 25% repetition loops" in lines[2] and "degenerate" in lines[2]
    yaml.safe_dump(report.model_dump(mode="json"))  # the report stays plain data


def test_init_grpo_gets_rewards_that_match_the_references(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "g.jsonl", chat_rows(40, seed=3))  # JSON answers
    res = CliRunner().invoke(
        app, ["init", str(tmp_path / "g"), "--data", str(data), "--model", str(tiny_model_dir), "--method", "grpo"]
    )
    assert res.exit_code == 0, res.output
    recipe = load_recipe(tmp_path / "g" / "recipe.yaml")
    assert [r.type for r in recipe.grpo.rewards] == ["json_valid", "exact_match"]
    assert recipe.grpo.rewards[1].field == "reference" and recipe.data.eval_fraction == 0.2
