"""The metric registry, the one scoring path and the one clock: every consumer reads a metric's direction from the
registry, outputs are scored one way, and latency per batch and per request carry different names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.eval import gates, metrics, registry, scoring, select
from tunesmith.records import read_eval_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "records"
LOWER = ["eval_loss", "perplexity", "forgetting", "forgetting_json", "text_loss_increase", "hallucination_rate"]
LOWER += ["p50_batch_ms", "p95_batch_ms", "p95_request_ms", "prompt_tokens", "completion_tokens", "cost_per_1k"]
HIGHER = ["exact_match", "token_f1", "rouge_l", "bleu", "json_valid", "json_field_accuracy", "semantic_similarity"]
HIGHER += ["reward", "win_rate_vs_base", "judge_agreement", "graders.city"]


@pytest.mark.parametrize("name", LOWER + HIGHER)
def test_every_consumer_reads_the_direction_from_the_registry(name):
    from tunesmith.cli.evaluate import comparison_table
    from tunesmith.eval.report import _delta_cell
    from tunesmith.records import EvalReport, Judgement

    higher = name in HIGHER
    assert registry.higher_is_better(name) is higher
    assert gates.parse_rule(name, 1.0)[0] == (">=" if higher else "<=")  # a bare number: gate and old target alike
    assert select.choose({"a": 1.0, "b": 2.0}, name) == ("b" if higher else "a")  # checkpoint selection
    assert ("good" if higher else "bad") in _delta_cell(name, 0.5)  # the HTML report's delta colour
    report = EvalReport(
        run="r",
        base_model="m",
        n_examples=1,
        json_mode=False,
        chat_template_sha256="x",
        summary={"base": {name: 1.0}, "tuned": {name: 1.5}, "delta": {name: 0.5}},
        judgement=Judgement(),
    )
    row = comparison_table(report).columns[3]._cells[0]  # the terminal table's delta colour
    assert row.startswith("[green]" if higher else "[red]")


def test_unknown_metrics_are_refused_where_a_recipe_names_them():
    from tunesmith.config import EvalSection

    with pytest.raises(ValueError, match="unknown metric 'exact_mach'"):
        EvalSection(gates={"exact_mach": 0.9})
    with pytest.raises(ValueError, match="not measured per checkpoint"):
        EvalSection(select_checkpoint="forgetting")
    assert EvalSection(gates={"p95_latency_ms": 800}).gates == {"p95_batch_ms": 800}  # the earlier name, read as is


def test_one_scoring_path_scores_outputs_against_references():
    refs = ['{"a": 1, "b": 2}', '{"a": 1}', "plain"]
    outs = ['{"a": 1, "b": 3}', '{"a": 1}', "nope"]
    scores = scoring.score(outs, refs, json_mode=True)
    assert scores.per_example == [scoring.score_example(o, r, True) for o, r in zip(outs, refs)]
    assert scores.per_example[0]["json_field_accuracy"] == 0.5 and scores.per_example[2]["json_field_accuracy"] is None
    assert scores.aggregate["json_field_accuracy"] == pytest.approx(0.75)  # None rows left out of the mean
    assert scores.aggregate["exact_match"] == pytest.approx(1 / 3)
    assert scores.aggregate["bleu"] == metrics.corpus_bleu(outs, refs)  # corpus BLEU, not a mean of sentence BLEU
    assert set(scores.aggregate) == {m.name for m in registry.per_example(True)}
    text = scoring.score(["x"], ["x"], json_mode=False)
    assert set(text.aggregate) == {"exact_match", "token_f1", "rouge_l", "bleu"}


def test_prompt_only_rows_are_scored_by_the_reward_not_against_an_empty_reference():
    from tunesmith.config import load_recipe
    from tunesmith.train.dpo import METHOD as DPO
    from tunesmith.train.grpo import METHOD as GRPO
    from tunesmith.train.rewards import scorer

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "configs" / "grpo.yaml", check_files=False)
    refs = ["", ""]
    reward = scorer(recipe, GRPO, refs)
    assert reward is not None
    scores = scoring.score(['{"customer": "A"}', "prose"], refs, json_mode=False, reward=reward, prompts=[[], []])
    assert [set(row) for row in scores.per_example] == [{"reward"}, {"reward"}]
    # json_valid (1) + schema (weight 1) + exact_match against "" (weight 2) + length penalty (0.5): the first is valid
    # JSON that fails the schema; the second is neither.
    assert scores.per_example[0]["reward"] == pytest.approx(1.0) and scores.per_example[1]["reward"] == 0.0
    assert scorer(load_recipe(Path(__file__).resolve().parents[2] / "configs" / "dpo.yaml", check_files=False), DPO, refs) is None


def test_the_one_clock_names_batch_and_request_latency_apart(monkeypatch):
    ticks = iter([0.0, 0.2, 0.5, 0.6])  # start, then the end of each of three batches (seconds)
    monkeypatch.setattr(scoring.time, "perf_counter", lambda: next(ticks))
    clock = scoring.Clock(batch_size=4)
    clock.start()
    for n in (4, 4, 1):
        clock(n)
    lat = clock.latency()
    assert (lat.requests, lat.batches, lat.total_s) == (9, 3, pytest.approx(0.6))
    assert lat.p50_batch_ms == pytest.approx(200.0) and lat.p95_request_ms is None  # batched: no request figure
    assert set(lat.values()) == {"p50_batch_ms", "p95_batch_ms"}
    single = scoring.Clock(batch_size=1, batches=[(1, 0.1), (1, 0.3)]).latency()
    assert single.p50_request_ms == single.p50_batch_ms == pytest.approx(200.0)
    assert all(registry.metric(name).unit == "ms" for name in single.values())


def test_grpo_rewards_are_the_registry_metrics():
    from tunesmith.train import rewards

    outs = ['{"a": 1}', "Sure: {a: 1}", "```json\n[1]\n```"]
    valid = registry.METRICS["json_valid"].fn
    assert valid is not None and rewards.json_valid(None, outs) == [valid(o, "") for o in outs]
    match = rewards.make_exact_match("reference")(None, outs, reference=['{"a": 1}', "x", "[1]"])
    assert match == [metrics.exact_match(o, r) for o, r in zip(outs, ['{"a": 1}', "x", "[1]"])]


def test_every_figure_a_report_carries_is_declared():
    report = read_eval_report(FIXTURES / "eval-report-v1.json")
    names = set(report.summary["tuned"]) | set(gates.gate_values(report))
    for name in names:
        registry.metric(name)  # raises for a figure nobody declared
    raw = json.loads((FIXTURES / "eval-report-v1.json").read_text())
    for gate in raw["gates"]:  # every gate an earlier recipe could name still names a declared metric
        if gate["name"] not in ("inputs_unchanged", "loss_converged", "beats_base"):
            registry.metric(gate["name"])
