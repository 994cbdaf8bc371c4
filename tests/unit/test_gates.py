"""Release gates: each gate passes and fails on hand-made reports; `tunesmith eval` exits non-zero on a failed gate;
forgetting, hallucination and the both-orders judge on hand-made cases; checkpoint selection in the train command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import EvalSection, load_recipe
from tunesmith.errors import RecipeError
from tunesmith.eval import forgetting, gates, hallucination, judge
from tunesmith.records import EvalReport, Judgement, read_eval_report, read_manifest


def report(
    tuned: dict | None = None, base: dict | None = None, extra: dict | None = None, json_mode: bool = True, win_rate: float = 0.5
) -> EvalReport:
    tuned = tuned if tuned is not None else {"exact_match": 0.9, "json_valid": 1.0, "json_field_accuracy": 0.95}
    base = base if base is not None else {k: v / 2 for k, v in tuned.items()}
    return EvalReport(
        run="r",
        base_model="m",
        n_examples=10,
        json_mode=json_mode,
        chat_template_sha256="x",
        summary={"base": base, "tuned": tuned, "delta": {k: tuned[k] - base[k] for k in tuned}},
        judgement=Judgement(wins=5, losses=1, ties=4, win_rate=win_rate),
        extra=extra or {},
    )


FULL_EXTRA = {
    "latency": {"tuned": {"batch_size": 4, "p50_batch_ms": 300.0, "p95_batch_ms": 700.0}},
    "forgetting": {
        "score": 0.01,
        "base_accuracy": 0.5,
        "tuned_accuracy": 0.49,
        "n_items": 40,
        "categories": {"arithmetic": {"base": 0.5, "tuned": 0.4, "drop": 0.1, "n": 10}},
        "text_loss": {"base": 2.0, "tuned": 2.2, "increase": 0.2},
    },
    "hallucination": {"rate": 0.04},
    "judge": {"win_rate": 0.7, "agreement": 0.9},
    "graders": {"exact": {"tuned": {"pass_rate": 0.8, "mean": 0.8}}},
    "changed_inputs": [],
}


@pytest.mark.parametrize(
    "name,passing,failing",
    [
        ("exact_match", ">=0.85", ">=0.95"),
        ("json_valid", ">=0.99", ">1.0"),
        ("forgetting", "<=0.02", "<=0.0"),
        ("forgetting_arithmetic", "<=0.1", "<0.1"),
        ("text_loss_increase", "<=0.5", "<=0.1"),
        ("hallucination_rate", "<=0.05", "<=0.01"),
        ("p95_batch_ms", "<=800", "<=500"),
        ("p50_batch_ms", "<400", "<300"),
        ("win_rate_vs_base", ">=0.6", ">=0.8"),
        ("judge_agreement", ">=0.8", "==1"),
        ("graders.exact", ">=0.8", ">0.8"),
    ],
)
def test_each_gate_passes_and_fails(name, passing, failing):
    values = gates.gate_values(report(extra=FULL_EXTRA))
    [ok] = gates.check_rules({name: passing}, values)
    [bad] = gates.check_rules({name: failing}, values)
    assert ok.status == "pass" and bad.status == "fail" and ok.value == bad.value == values[name]


def test_win_rate_falls_back_to_the_metric_judgement_and_unmeasured_gates_fail():
    values = gates.gate_values(report(win_rate=0.65))  # no LLM judge: metrics.compare's win rate
    assert values["win_rate_vs_base"] == 0.65
    [missing] = gates.check_rules({"hallucination_rate": "<=0.05"}, gates.gate_values(report(extra={})))
    assert missing.status == "fail" and "not measured" in missing.detail
    [skipped] = gates.check_rules({"forgetting": "<=0.02"}, {}, where="ladder")  # the ladder never measures it
    assert skipped.status == "skip" and skipped.passed and "tunesmith eval" in skipped.detail


def test_rules_parse_and_bare_numbers_take_the_metric_direction():
    assert gates.parse_rule("exact_match", ">= 0.85") == (">=", 0.85)
    assert gates.parse_rule("exact_match", 0.9) == (">=", 0.9)
    assert gates.parse_rule("p95_batch_ms", 800) == ("<=", 800.0)
    assert gates.parse_rule("p95_latency_ms", 800) == ("<=", 800.0)  # the earlier name of the same clock
    assert gates.parse_rule("cost_per_1k", 0.5) == ("<=", 0.5)
    assert gates.parse_rule("forgetting_json", 0.05) == ("<=", 0.05)
    for bad in ("0.85", ">= high", "=>0.8", "~0.5"):
        with pytest.raises(ValueError, match="rule"):
            gates.parse_rule("exact_match", bad)
    with pytest.raises(Exception, match="gate exact_match"):
        EvalSection(gates={"exact_match": "at least 0.8"})
    with pytest.raises(RecipeError, match="metric=RULE"):
        gates.gate_options(["exact_match"])


@pytest.mark.parametrize(
    "losses,expected,why",
    [
        ([2.0, 1.5, 1.2, 1.1, 1.05, 1.04, 1.04, 1.03], "pass", ""),
        ([4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5], "fail", "still falling"),
        ([2.0, 1.0, 0.9, 0.9, 1.0, 1.2, 1.4, 1.6], "fail", "diverging"),
        ([2.0, 1.0, float("nan"), 1.0], "fail", "not finite"),
        ([2.0, 1.0], "fail", "too few"),
    ],
)
def test_loss_converged(losses, expected, why):
    result = gates.loss_converged([{"step": i, "loss": x} for i, x in enumerate(losses)])
    assert result.status == expected and why in result.detail


def test_loss_converged_prefers_eval_loss_when_logged_often_enough():
    falling_train = [{"loss": 5.0 - i * 0.5} for i in range(8)]
    flat_eval = [{"eval_loss": x} for x in (1.0, 0.9, 0.9, 0.9)]
    result = gates.loss_converged(falling_train + flat_eval)
    assert result.status == "pass" and "eval_loss" in result.detail


def test_beats_base_and_inputs_unchanged():
    assert gates.beats_base(report()).status == "pass"
    same = {"json_field_accuracy": 0.5, "exact_match": 0.5}
    failed = gates.beats_base(report(tuned=same, base=same))
    assert failed.status == "fail" and "json_field_accuracy" in failed.rule
    assert gates.inputs_unchanged(report()).status == "pass"
    changed = gates.inputs_unchanged(report(extra={"changed_inputs": ["eval.jsonl changed since training"]}))
    assert changed.status == "fail" and "eval.jsonl" in changed.detail


def test_checklist_only_when_gates_or_graders_are_set():
    r = report()
    assert gates.check_report(r, EvalSection(), []) == []
    results = gates.check_report(r, EvalSection(gates={"exact_match": ">=0.85"}, checks=["beats_base"]), [])
    assert [(g.name, g.status) for g in results] == [("beats_base", "pass"), ("exact_match", "pass")]


def test_ladder_rungs_are_checked_by_the_same_engine():
    from tunesmith.eval.ladder_report import RungResult
    from tunesmith.records import Latency

    rung = RungResult(name="tuned", label="tuned", metrics={"exact_match": 0.9}, latency=Latency(p95_batch_ms=900.0))
    results = gates.check_rules(
        {"exact_match": ">=0.85", "p95_latency_ms": "<=800", "forgetting": "<=0.02", "hallucination_rate": 0.1},
        rung.values(),
        where="ladder",
    )
    assert [(r.name, r.status) for r in results] == [
        ("exact_match", "pass"),
        ("p95_batch_ms", "fail"),  # the earlier name, read as the clock it always was
        ("forgetting", "skip"),  # eval measures it, the ladder never does
        ("hallucination_rate", "skip"),
    ]


# --- forgetting ------------------------------------------------------------------------------------------------------


def test_the_bundled_probe_covers_five_categories():
    items = forgetting.load_probe()
    assert len(items) == 40
    assert {i.category for i in items} == {"arithmetic", "unit_conversion", "capitals", "instruction", "json"}
    assert len(forgetting.load_general_text()) >= 5
    assert all(forgetting.answer_ok(json.dumps(i.answer) if i.check == "json" else str(i.answer), i) for i in items)


def test_answer_checks():
    item = forgetting.ProbeItem
    assert forgetting.answer_ok("The answer is 19.", item("a", "arithmetic", "", 19, "number"))
    assert not forgetting.answer_ok("The answer is 18.", item("a", "arithmetic", "", 19, "number"))
    assert not forgetting.answer_ok("144 divided by 12 is 1.44", item("a", "arithmetic", "", 12, "number"))  # echo
    assert forgetting.answer_ok("1,500", item("u", "unit_conversion", "", 1500, "number"))
    assert forgetting.answer_ok("It is paris.", item("c", "capitals", "", "Paris", "contains"))
    assert not forgetting.answer_ok("Parisian", item("c", "capitals", "", "Paris", "contains"))
    assert forgetting.answer_ok("yes.", item("i", "instruction", "", "YES", "exact"))
    assert not forgetting.answer_ok("Yes, sure", item("i", "instruction", "", "YES", "exact"))
    assert forgetting.answer_ok('```json\n{"a": 1, "b": 2}\n```', item("j", "json", "", {"a": 1, "b": 2}, "json"))
    assert not forgetting.answer_ok('Here: {"a": 1}', item("j", "json", "", {"a": 1}, "json"))


def test_forgetting_is_the_accuracy_drop_per_category():
    items = [
        forgetting.ProbeItem(f"x{i}", cat, "", ans, "number")
        for i, (cat, ans) in enumerate([("arithmetic", 1), ("arithmetic", 2), ("capitals", 3), ("capitals", 4)])
    ]
    scores = forgetting.forgetting_scores(items, ["1", "2", "3", "0"], ["1", "0", "3", "4"], base_loss=2.0, tuned_loss=2.5)
    assert scores["score"] == pytest.approx(0.0)  # 3/4 both: one lost, one gained
    assert scores["categories"]["arithmetic"] == {"base": 1.0, "tuned": 0.5, "drop": 0.5, "n": 2}
    assert scores["categories"]["capitals"]["drop"] == -0.5
    assert scores["text_loss"]["increase"] == pytest.approx(0.5)


# --- hallucination ---------------------------------------------------------------------------------------------------


def test_json_hallucination_counts_values_supported_by_neither_input_nor_reference():
    source = "Order 1042: two blue mugs shipped to Lyon on 3 May."
    ref = json.dumps({"order": 1042, "colour": "blue", "city": "Lyon", "gift": False})
    assert hallucination.json_claims(ref, ref, source) == (4, 0)
    # "Paris" is in neither; 99 is in neither; "BLUE" matches the input ignoring case; "mugs" is in the input only.
    pred = json.dumps({"order": 99, "colour": "BLUE", "city": "Paris", "item": "mugs"})
    assert hallucination.json_claims(pred, ref, source) == (4, 2)
    # true/false/null are judged by the reference at the same key only.
    assert hallucination.json_claims(json.dumps({"gift": True}), ref, source) == (1, 1)
    assert hallucination.json_claims(json.dumps({"gift": False}), ref, source) == (1, 0)
    assert hallucination.json_claims(json.dumps({"express": False}), ref, source) == (1, 1)
    assert hallucination.json_claims("not json", ref, source) is None
    result = hallucination.json_hallucination([pred, "not json"], [ref, ref], [source, source])
    assert result["rate"] == 0.5 and result["scored"] == 1 and result["examples"] == 2


def test_rate_with_nothing_scored_is_none():
    assert hallucination.rate([None, None])["rate"] is None


# --- judge -----------------------------------------------------------------------------------------------------------


class FakeJudge:
    """Answers with `pick(prompt_text)` for each conversation; records what it saw."""

    def __init__(self, pick):
        self.pick, self.seen = pick, []

    def complete(self, conversations):
        self.seen += conversations
        return [self.pick(c[-1]["content"]) for c in conversations]


def _answer(text: str, label: str) -> str:
    return text.split(f"Answer {label}:\n", 1)[1].split("\n\n", 1)[0]


def test_judge_both_orders_cancel_position_bias():
    prompts, refs, base, tuned = ["q1", "q2"], ["r1", "r2"], ["bad one", "bad two"], ["GOOD one", "GOOD two"]
    fair = FakeJudge(lambda t: "A" if "GOOD" in _answer(t, "A") else "B")
    result = judge.pairwise(fair, prompts, refs, base, tuned)
    assert len(fair.seen) == 4 and result["win_rate"] == 1.0 and result["agreement"] == 1.0
    biased = FakeJudge(lambda t: "A")  # always the first position: each order says the opposite
    result = judge.pairwise(biased, prompts, refs, base, tuned)
    assert result["agreement"] == 0.0 and result["ties"] == 2 and result["win_rate"] == 0.0
    assert result["orders"]["tuned_first"]["win_rate"] == 1.0 and result["orders"]["base_first"]["win_rate"] == 0.0
    silent = judge.pairwise(FakeJudge(lambda t: "no idea"), prompts, refs, base, tuned)
    assert silent["unparsed"] == 4 and silent["agreement"] == 0.0


def test_parse_verdict():
    assert judge.parse_verdict("B") == "B" and judge.parse_verdict("Answer a is better") is None
    assert judge.parse_verdict("I think A.") == "A" and judge.parse_verdict("Tie.") == "tie"


def test_free_text_claims_labelled_by_the_judge():
    reply = 'Sure: {"claims": [{"claim": "x", "supported": true}, {"claim": "y", "supported": false}]}'
    fake = FakeJudge(lambda t: reply if "ANSWER:\nfirst" in t else "cannot say")
    claims = judge.unsupported_claims(fake, ["first", "second"], ["t1", "t2"], ["s1", "s2"])
    assert claims == [(2, 1), None] and hallucination.rate(claims)["rate"] == 0.5


# --- through the CLI and the train command -----------------------------------------------------------------------------


def test_eval_exit_code_follows_the_gates(tiny_recipe):
    from tunesmith.train import sft

    path = tiny_recipe(
        training={"max_steps": 2, "save_steps": 2},
        eval={"gates": {"json_valid": ">=0"}, "checks": ["inputs_unchanged"], "max_examples": 2},
    )
    run = sft.run(load_recipe(path))
    runner = CliRunner()
    ok = runner.invoke(app, ["eval", str(run.dir)])
    assert ok.exit_code == 0, ok.output
    assert "PASS inputs_unchanged" in ok.output and "PASS json_valid" in ok.output
    stored = read_eval_report(run.dir / "eval" / "report.json")
    assert [(g.name, g.passed) for g in stored.gates] == [("inputs_unchanged", True), ("json_valid", True)]
    latency = stored.extra.latency["tuned"]
    assert stored.extra.hallucination is not None and latency.p95_batch_ms is not None and latency.p95_batch_ms > 0
    assert latency.batch_size == 4 and latency.requests == 2 and latency.p95_request_ms is None  # batched: no request figure
    failed = runner.invoke(app, ["eval", str(run.dir), "--gate", "exact_match=>=1.5", "--gate", "p95_latency_ms=<=0.001"])
    assert failed.exit_code == gates.GATES_FAILED_EXIT
    assert "FAIL exact_match" in failed.output and "FAIL p95_batch_ms" in failed.output
    assert "a release gate failed" in failed.output
    bad = runner.invoke(app, ["eval", str(run.dir), "--gate", "exact_match"])
    assert bad.exit_code == 1 and "metric=RULE" in bad.output


def test_forgetting_gate_runs_the_probe_on_base_and_tuned(tiny_recipe, monkeypatch):
    from tunesmith.train.methods import evaluate

    monkeypatch.setattr(forgetting, "PROBE_MAX_NEW_TOKENS", 4)  # a random tiny model never stops: keep it short
    from tunesmith.run import load_run
    from tunesmith.train import sft

    path = tiny_recipe(
        training={"max_steps": 1, "save_steps": 1}, eval={"gates": {"forgetting": "<=0.02"}, "checks": [], "max_examples": 1}
    )
    run = load_run(sft.run(load_recipe(path)).dir)
    result = evaluate(run)
    f = result.extra.forgetting
    assert f is not None and f.n_items == 40
    assert set(f.categories) == {"arithmetic", "unit_conversion", "capitals", "instruction", "json"}
    assert f.text_loss.base > 0 and f.text_loss.tuned > 0
    [gate] = result.gates
    assert gate.name == "forgetting" and gate.value == f.score


def test_checkpoint_selection_keeps_the_best_and_records_every_score(tiny_recipe, monkeypatch):
    from tunesmith.eval import select
    from tunesmith.train import sft

    # A scorer that prefers checkpoint-2 (by the adapter the one PeftModel has active), so "best" is known.
    monkeypatch.setattr(select, "score", lambda model, *a: {"checkpoint-2": 0.9}.get(model.active_adapter, 0.1))
    path = tiny_recipe(training={"max_steps": 4, "save_steps": 2}, eval={"select_checkpoint": "exact_match"})
    run = sft.run(load_recipe(path))
    sel = read_manifest(run.dir / "manifest.json").checkpoint_selection
    assert sel is not None and sel.chosen == "checkpoint-2" and sel.metric == "exact_match"
    assert sel.scores == {"checkpoint-2": 0.9, "checkpoint-4": 0.1, "final": 0.1}
    weights = "adapter_model.safetensors"
    assert (run.dir / "adapter" / weights).read_bytes() == (run.dir / "checkpoints" / "checkpoint-2" / weights).read_bytes()
    assert (run.dir / "adapter" / "tokenizer_config.json").exists()


def test_checkpoint_selection_by_eval_loss_scores_for_real(tiny_recipe):
    from tunesmith.eval import select
    from tunesmith.train import sft

    path = tiny_recipe(training={"max_steps": 4, "save_steps": 2}, eval={"select_checkpoint": "eval_loss", "select_examples": 3})
    run = sft.run(load_recipe(path))
    sel = run.manifest.checkpoint_selection
    assert sel is not None and set(sel.scores) == {"checkpoint-2", "checkpoint-4", "final"} and sel.n_examples == 3
    assert sel.chosen == select.choose(sel.scores, "eval_loss")
    assert sel.scores[sel.chosen] == min(sel.scores.values())
    assert sel.scores["checkpoint-4"] == pytest.approx(sel.scores["final"], rel=1e-5)  # the same weights


def test_choose_picks_by_direction_and_breaks_ties_late():
    from tunesmith.eval.select import choose

    assert choose({"c-1": 0.5, "c-2": 0.8, "final": 0.7}, "exact_match") == "c-2"
    assert choose({"c-1": 0.5, "c-2": 0.8, "final": 0.7}, "eval_loss") == "c-1"
    assert choose({"c-1": 0.8, "final": 0.8}, "exact_match") == "final"


def test_free_text_eval_gets_judge_win_rate_and_claim_hallucination(monkeypatch):
    from tunesmith.eval import release

    reply = '{"claims": [{"claim": "a", "supported": true}, {"claim": "b", "supported": false}]}'
    fake = FakeJudge(lambda t: reply if "TRUTH" in t else ("A" if "GOOD" in _answer(t, "A") else "B"))
    monkeypatch.setattr(release, "_judge", lambda section: fake)
    data = release.EvalOutputs(
        ["1", "2"],
        [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]],
        ["r1", "r2"],
        {"base": ["bad", "bad"], "tuned": ["GOOD", "GOOD"]},
        json_mode=False,
    )
    section = EvalSection(gates={"win_rate_vs_base": ">=0.6", "hallucination_rate": "<=0.05"}, checks=[])
    extra = release.measure(section, data, sides=lambda side: pytest.fail("no probe asked for"), tokenizer=None, max_length=64)
    assert extra.judge is not None and extra.judge.win_rate == 1.0 and extra.judge.agreement == 1.0
    assert extra.hallucination is not None and extra.hallucination.rate == 0.5
    assert extra.hallucination.method == "claims labelled by the judge"
    results = gates.check_report(report(extra=extra.model_dump(), json_mode=False), section, [])
    assert [(g.name, g.status) for g in results] == [("win_rate_vs_base", "pass"), ("hallucination_rate", "fail")]


def test_targets_of_earlier_recipes_read_as_gates_with_a_deprecation_note(tmp_path, caplog):
    from pathlib import Path

    from tunesmith.config import recipe_from_dict

    data = {"data": {"train": ["t.jsonl"]}, "eval": {"gates": {"exact_match": ">=0.95"}}}
    old = {**data, "targets": {"exact_match": 0.9, "json_valid": 0.99, "p95_latency_ms": 800, "cost_per_1k": 0.5}}
    with caplog.at_level("WARNING"):
        recipe = recipe_from_dict(old, tmp_path, check_files=False)
    assert "`targets:` is deprecated" in caplog.text and "eval.gates" in caplog.text
    # A gate the recipe already set wins; the old latency name reads as the batch clock it measured.
    assert recipe.eval.gates == {"exact_match": ">=0.95", "json_valid": 0.99, "p95_batch_ms": 800, "cost_per_1k": 0.5}
    assert "targets" not in recipe.model_dump()
    caplog.clear()
    written = {**data, "targets": {"exact_match": None, "bleu": None}}  # a run.yaml lists every unset target
    with caplog.at_level("WARNING"):
        assert recipe_from_dict(written, tmp_path, check_files=False).eval.gates == {"exact_match": ">=0.95"}
    assert "deprecated" not in caplog.text
    # eval checks the same gates; the ones only the ladder measures are skipped there, naming the ladder.
    results = gates.check_rules(recipe.eval.gates, gates.gate_values(report(extra=FULL_EXTRA)))
    assert [(r.name, r.status) for r in results] == [
        ("exact_match", "fail"),
        ("json_valid", "pass"),
        ("p95_batch_ms", "pass"),
        ("cost_per_1k", "skip"),
    ]
    assert "tunesmith ladder" in results[-1].detail
    shipped = Path(__file__).resolve().parents[2] / "configs"
    assert not [p.name for p in shipped.glob("*.yaml") if "targets:" in p.read_text()]
