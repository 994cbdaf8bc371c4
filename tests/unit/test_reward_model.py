"""`method: reward`: TRL's RewardTrainer on the tiny model from every preference source, its eval (pairwise accuracy,
calibration), and the one scorer used as a GRPO reward, as eval's `reward_model` metric and by the monitor."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from helpers import chat_rows, write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.train.entry import run as train_run


def _pairs(n: int, seed: int) -> list[dict]:
    """prompt / chosen (the JSON sum) / rejected (a refusal): a preference the tiny model can learn."""
    return [
        {
            "prompt": r["messages"][:2],
            "chosen": [r["messages"][2]],
            "rejected": [{"role": "assistant", "content": "no idea, sorry"}],
        }
        for r in chat_rows(n, seed)
    ]


def _feedback_export(n: int) -> list[dict]:
    """Served feedback as `tunesmith feedback export --to dpo` writes it (monitor.feedback.dpo_rows, OpenAI DPO shape)."""
    from tunesmith.monitor.feedback import dpo_rows
    from tunesmith.serve.store import FeedbackRow, Message, RequestRow

    requests, feedback = {}, []
    for i, r in enumerate(chat_rows(n, seed=11)):
        rid = f"req-{i}"
        requests[rid] = RequestRow(
            request_id=rid,
            time=datetime.now(timezone.utc),
            model="m",
            messages=[Message(**m) for m in r["messages"][:2]],
            output="no idea, sorry",
        )
        feedback.append(FeedbackRow(request_id=rid, rating="down", correction=r["messages"][2]["content"]))
    rows, skipped = dpo_rows(requests, feedback)
    assert len(rows) == n and not skipped
    return rows


def _review_export(n: int) -> list[dict]:
    """A studio blind-review round's preferences as `tunesmith review export --to dpo` writes them."""
    from tunesmith.studio.review import ReviewItem, Verdict, export_rows

    items, verdicts = [], []
    for i, r in enumerate(chat_rows(n, seed=13)):
        items.append(
            ReviewItem(
                id=i,
                example_id=f"e{i}",
                messages=r["messages"][:2],
                answer_x="no idea, sorry",
                answer_y=r["messages"][2]["content"],
            )
        )
        verdicts.append(Verdict(item_id=i, reviewer="ana", choice="y"))
    rows = export_rows(items, verdicts, "dpo")
    assert len(rows) == n
    return rows


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir):
    """One reward run (LoRA, the default) trained on three preference sources: a prompt/chosen/rejected file, a served
    feedback export and a studio review export."""
    import yaml

    root = tmp_path_factory.mktemp("reward")
    write_jsonl(root / "pairs.jsonl", _pairs(16, seed=1))
    write_jsonl(root / "feedback-dpo.jsonl", _feedback_export(8))
    write_jsonl(root / "review-dpo.jsonl", _review_export(8))
    recipe = {
        "name": "rm",
        "method": "reward",
        "model": {"base": str(tiny_model_dir)},
        "data": {"train": ["pairs.jsonl", "feedback-dpo.jsonl", "review-dpo.jsonl"], "eval_fraction": 0.25, "max_length": 128},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 12, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 12},
        "eval": {"batch_size": 4, "gates": {"pairwise_accuracy": ">=0.75"}, "checks": ["inputs_unchanged"]},
        "output_dir": "runs/rm",
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return train_run(load_recipe(root / "recipe.yaml"))


def test_a_reward_run_trains_a_score_head_with_trls_reward_trainer(reward_run, tiny_model_dir):
    from safetensors import safe_open

    from tunesmith.run import read_metrics
    from tunesmith.train.reward import RewardDetails

    m = reward_run.manifest
    assert m.method == "reward" and isinstance(m.details, RewardDetails) and m.tokens.train.kept == 24
    config = json.loads((reward_run.dir / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["peft_type"] == "LORA"
    with safe_open(str(reward_run.dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any(k.endswith("score.weight") for k in keys)  # head saved in full
    logged = read_metrics(reward_run.dir)
    assert any("accuracy" in r and "margin" in r for r in logged)  # RewardTrainer's own figures, step by step
    assert "accuracy" in m.details.final_eval and m.details.held_out_pairs == 8
    saved = [json.loads(x) for x in (reward_run.dir / m.details.pairs).read_text().splitlines()]
    assert len(saved) == 8 and all({"prompt", "chosen", "rejected"} <= set(r) for r in saved)


def test_the_scorer_encodes_exactly_as_training_and_ranks_the_pairs(reward_run):
    from tunesmith.config import load_recipe as load
    from tunesmith.eval.reward_model import RewardModel, encode
    from tunesmith.train.reward import METHOD

    model = RewardModel.load(reward_run.dir)
    assert RewardModel.load(reward_run.dir) is model  # loaded once per process
    recipe = load(reward_run.dir / "run.yaml", check_files=False)
    data = METHOD.datasets(recipe, model.tokenizer)
    pairs = [json.loads(x) for x in (reward_run.dir / "data" / "eval_pairs.jsonl").read_text().splitlines()]
    first = pairs[0]
    assert data.eval[0]["chosen_ids"] == encode(model.tokenizer, first["prompt"], first["chosen"])
    chosen = model.score([p["prompt"] for p in pairs], [p["chosen"][-1]["content"] for p in pairs])
    rejected = model.score([p["prompt"] for p in pairs], [p["rejected"][-1]["content"] for p in pairs])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 7  # held-out pairs: the preference was learned
    # batching does not change a score (right padding, as TRL's collator pads)
    alone = model.score([pairs[0]["prompt"]], [pairs[0]["chosen"][-1]["content"]], batch_size=1)
    assert alone[0] == pytest.approx(chosen[0], abs=1e-4)


def test_eval_of_a_reward_run_reports_pairwise_accuracy_and_calibration(reward_run):
    from tunesmith.eval.reward_eval import read_calibration
    from tunesmith.records import read_eval_report

    res = CliRunner().invoke(app, ["eval", str(reward_run.dir)])
    assert res.exit_code == 0, res.output
    assert "pairwise_accuracy" in res.output and "calibration_error (ECE)" in res.output and "0.9-1.0" in res.output
    report = read_eval_report(reward_run.dir / "eval" / "report.json")
    tuned, base = report.summary["tuned"], report.summary["base"]
    assert tuned["pairwise_accuracy"] >= 0.75 and {"reward_margin", "calibration_error"} <= set(tuned) <= set(base)
    assert [g.name for g in report.gates] == ["inputs_unchanged", "pairwise_accuracy"] and all(g.passed for g in report.gates)
    table = read_calibration(reward_run.dir)
    assert sum(b.pairs for b in table.tables["tuned"]) == report.n_examples == 8
    res = CliRunner().invoke(app, ["eval", str(reward_run.dir), "--gate", "pairwise_accuracy=>1.5"])
    assert res.exit_code == 3 and "FAIL pairwise_accuracy" in res.output


def test_pairwise_accuracy_and_the_reliability_table_by_hand():
    from tunesmith.eval.reward_eval import pairwise, reliability

    margins = [3.0, 3.0, -3.0, 0.2, -0.2, 0.0]  # sigmoid(3) = 0.953, sigmoid(0.2) = 0.550
    assert pairwise(margins)["pairwise_accuracy"] == pytest.approx((3 + 0.5) / 6)
    buckets, ece = reliability(margins)
    top, low = buckets[-1], buckets[0]
    assert (top.pairs, low.pairs) == (3, 3) and top.accuracy == pytest.approx(2 / 3)
    conf_top = 1 / (1 + math.exp(-3.0))
    conf_low = (2 * (1 / (1 + math.exp(-0.2))) + 0.5) / 3
    assert ece == pytest.approx(0.5 * abs(2 / 3 - conf_top) + 0.5 * abs(0.5 - conf_low))


def test_a_reward_run_is_a_grpo_reward(reward_run, tiny_recipe, tmp_path):
    from tunesmith.errors import RecipeError
    from tunesmith.eval.reward_model import RewardModel
    from tunesmith.run import read_metrics
    from tunesmith.train import rewards

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["messages"][:2]} for r in chat_rows(12, 4)])
    path = tiny_recipe(
        method="grpo",
        data={"train": ["prompts.jsonl"], "eval": None},
        training={"max_steps": 1, "batch_size": 4},
        grpo={"rewards": [f"run:{reward_run.dir}", "json_valid"], "num_generations": 4, "max_completion_length": 6},
    )
    recipe = load_recipe(path)
    spec = recipe.grpo.rewards[0]
    assert spec.type == "reward_model" and spec.run == str(reward_run.dir)
    fn = rewards.build(recipe.grpo.rewards)[0]
    prompt = [{"role": "user", "content": "Add 1 and 2."}]
    completions = [[{"role": "assistant", "content": '{"sum": 3}'}], [{"role": "assistant", "content": "no idea, sorry"}]]
    got = fn([prompt, prompt], completions)
    assert got == RewardModel.load(reward_run.dir).score([prompt, prompt], ['{"sum": 3}', "no idea, sorry"])
    run = train_run(recipe)
    assert any("rewards/reward_model/mean" in r for r in read_metrics(run.dir))
    with pytest.raises(RecipeError, match="not a finished reward run"):
        rewards.build([type(spec)(type="reward_model", run=str(run.dir))])  # a GRPO run is no reward model
    with pytest.raises(ValueError, match="reward_model needs `run`"):
        type(spec)(type="reward_model")
    relative = os.path.relpath(reward_run.dir, tmp_path)  # the long form, relative to the recipe's folder
    long_form = tiny_recipe(method="grpo", data={"train": ["prompts.jsonl"], "eval": None},
                            grpo={"rewards": [{"type": "reward_model", "run": relative, "weight": 0.5}]})  # fmt: skip
    assert load_recipe(long_form).grpo.rewards[0].run == str(reward_run.dir)
    missing = tiny_recipe(method="grpo", data={"train": ["prompts.jsonl"], "eval": None}, grpo={"rewards": ["run:nowhere"]})
    with pytest.raises(RecipeError, match="reward model run not found"):
        load_recipe(missing)


def test_eval_reward_model_scores_base_and_tuned_answers(reward_run, tiny_recipe):
    from tunesmith.run import load_run
    from tunesmith.train.methods import evaluate

    path = tiny_recipe(
        training={"max_steps": 2}, eval={"reward_model": str(reward_run.dir), "gates": {"reward_model": ">=-1000"}, "checks": []}
    )
    run = train_run(load_recipe(path))
    report = evaluate(load_run(run.dir))
    assert {"reward_model"} <= set(report.summary["base"]) and "reward_model" in report.summary["delta"]
    assert report.gates[0].name == "reward_model" and report.gates[0].passed
    rows = [json.loads(x) for x in (run.dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(r["tuned_metrics"]["reward_model"], float) for r in rows)


def test_the_monitor_ranks_served_answers_with_the_reward_model(reward_run, tmp_path):
    """Served answers that turned into refusals score lower than the earlier window's: signal reward_model drifts."""
    from datetime import timedelta

    from tunesmith.monitor.report import DRIFT_EXIT, read_report
    from tunesmith.serve.store import Message, RequestLog, RequestRow

    until = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    serve = tmp_path / "serve"
    serve.mkdir()
    with RequestLog.open(serve, create=True) as log:
        for i, r in enumerate(chat_rows(40, seed=21)):
            recent = i % 2 == 0
            at = until - timedelta(hours=3 if recent else 30)
            log.add_request(
                RequestRow(
                    request_id=f"r{i}",
                    time=at,
                    model="m",
                    messages=[Message(**m) for m in r["messages"][:2]],
                    output="no idea, sorry" if recent else r["messages"][2]["content"],
                )  # fmt: skip
            )
    args = [
        "monitor",
        str(serve),
        "--embedder",
        "char-ngrams",
        "--until",
        until.isoformat(),
        "--reward-model",
        str(reward_run.dir),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == DRIFT_EXIT, res.output
    report = read_report(serve / "monitor" / "monitor.json")
    signal = next(s for s in report.signals if s.name == "reward_model")
    assert signal.status == "drift" and signal.recent < signal.baseline and report.reward_model == str(reward_run.dir)
    assert [h.reward_mean is not None for h in report.hours] == [True, True]
