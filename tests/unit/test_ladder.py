"""The ladder: every rung on the same prompts and metrics, the recommendation rule, the report and its page."""

from __future__ import annotations

import html
import json

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.errors import RunError
from tunesmith.eval import gates, metrics, scoring
from tunesmith.eval.ladder import (
    SPECS,
    cost_per_1k,
    ladder_inputs,
    run_ladder,
    rung_prompts,
    write_ladder,
)
from tunesmith.eval.ladder_report import (
    LadderReport,
    RungResult,
    read_ladder_report,
    write_ladder_report,
)
from tunesmith.eval.recommend import recommend
from tunesmith.rag.retrieve import Passage
from tunesmith.records import Latency
from tunesmith.train import sft

FACT = "The answer key lives in the catalog."


class FakeRetriever:
    """Stands in for a Retriever: one passage per query, and a record of what was asked."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, query: str, k: int = 4, mode: str = "hybrid") -> list[Passage]:
        self.queries.append(query)
        return [Passage(FACT, "kb.md", 3, 1.0, "kb-3")][:k]


def _rag_recipe(path, tmp_path):
    (tmp_path / "idx").mkdir(exist_ok=True)
    return load_recipe(path, [f"rag.index={tmp_path / 'idx'}", "rag.k=1"])


def test_every_rung_answers_the_same_prompts_scored_like_eval(tiny_recipe, tmp_path, monkeypatch):
    from tunesmith.eval import compare
    from tunesmith.train import methods

    path = tiny_recipe(ladder={"few_shot_k": 2}, eval={"batch_size": 8})
    run = sft.run(load_recipe(path))
    recipe = _rag_recipe(path, tmp_path)
    fake = FakeRetriever()
    report, rows = run_ladder(recipe, retriever=fake)

    status = {r.name: r.status for r in report.rungs}
    assert status == {
        "base": "ok",
        "base_few_shot": "ok",
        "base_rag": "ok",
        "tuned": "ok",
        "tuned_rag": "ok",
        "student": "skipped",
    }
    assert "student" in (report.rung("student").reason or "")
    assert report.n_examples == 6 and all(r.n_examples == 6 for r in report.measured)

    inputs = ladder_inputs(recipe, retriever=FakeRetriever())
    assert fake.queries == [c[-1]["content"] for c in inputs.convs]  # retrieval asked with each eval prompt, once
    for spec in SPECS.values():
        if spec.name == "student":
            continue
        prompts = rung_prompts(spec, inputs)
        assert [p[-1] for p in prompts] == [c[-1] for c in inputs.convs]  # same question last, every rung
        assert all((FACT in p[0]["content"]) == spec.rag for p in prompts)
        assert all(len(p) == len(c) + (4 if spec.few_shot else 0) for p, c in zip(prompts, inputs.convs))

    # Same metric functions as `tunesmith eval`: its base/tuned summary equals the ladder's zero-shot rungs.
    monkeypatch.setattr(compare, "write_outputs", lambda *a, **k: None)  # only its numbers are compared here
    ev = methods.evaluate(run)
    for side, rung in (("base", "base"), ("tuned", "tuned")):
        for metric in ("exact_match", "token_f1", "rouge_l", "json_valid", "json_field_accuracy", "bleu"):
            assert report.rung(rung).metrics[metric] == pytest.approx(ev.summary[side][metric]), (rung, metric)
    json_mode = metrics.references_are_json([r["reference"] for r in rows])
    for rung in report.measured:
        texts = [row["outputs"][rung.name] for row in rows]
        again = metrics.aggregate([scoring.score_example(t, row["reference"], json_mode) for t, row in zip(texts, rows)])
        assert rung.metrics["exact_match"] == pytest.approx(again["exact_match"])
        p50, p95 = rung.latency.p50_batch_ms, rung.latency.p95_batch_ms
        assert p50 is not None and p95 is not None and p95 >= p50 > 0 and rung.completion_tokens > 0
    by = {r.name: r for r in report.measured}
    assert by["base_few_shot"].prompt_tokens > by["base"].prompt_tokens < by["base_rag"].prompt_tokens
    assert by["base"].prompt_tokens == by["tuned"].prompt_tokens and by["base_rag"].prompt_tokens == by["tuned_rag"].prompt_tokens
    assert rows[0]["passages"] == ["kb.md:3"]


def test_base_only_ladder_before_training_and_token_pricing(tiny_recipe):
    recipe = load_recipe(tiny_recipe(ladder={"price_per_1k_tokens": 0.5, "max_new_tokens": 4}))
    report, _ = run_ladder(recipe, max_examples=3)
    reasons = {r.name: r.reason for r in report.rungs if r.status == "skipped"}
    assert set(reasons) == {"base_rag", "tuned", "tuned_rag", "student"}
    assert "train first" in reasons["tuned"] and "rag" in reasons["base_rag"]
    assert report.cost_basis == "tokens" and report.price == 0.5
    for r in report.measured:
        assert r.n_examples == 3 and r.completion_tokens <= 4
        assert r.cost_per_1k == pytest.approx((r.prompt_tokens + r.completion_tokens) * 0.5)


def test_cost_per_1k_on_each_basis():
    assert cost_per_1k("tokens", 0.002, 300, 100, 9.9) == pytest.approx(0.8)  # 400 tokens x 0.002 per 1k x 1,000
    assert cost_per_1k("compute", 3.6, 300, 100, 0.5) == pytest.approx(0.5)  # 500 machine-s x 3.6 per hour


def _rung(name: str, em: float, p95: float = 100.0, cost: float = 1.0, status: str = "ok") -> RungResult:
    return RungResult(
        name=name,
        label=SPECS[name].label,
        status=status,
        n_examples=10,
        metrics={"exact_match": em},
        latency=Latency(p50_batch_ms=p95 / 2, p95_batch_ms=p95),
        cost_per_1k=cost,
    )


def _gated(rungs: list[RungResult], rules: dict) -> list[RungResult]:
    """The rungs with `rules` checked on each by the release-gate engine, as run_ladder does."""
    return [r.model_copy(update={"gates": gates.check_rules(rules, r.values(), where="ladder")}) for r in rungs]


LADDER = [
    _rung("base", 0.1, 50, 1.0),
    _rung("base_few_shot", 0.3, 80, 3.0),
    _rung("base_rag", 0.95, 900, 2.0),
    _rung("tuned", 0.92, 60, 1.0),
    _rung("tuned_rag", 0.99, 700, 2.0),
]


@pytest.mark.parametrize(
    "rungs,rules,winner,closest,warning",
    [
        # RAG alone meets quality but not latency: tuned + RAG? too slow too; plain tuned wins, with the warning.
        (LADDER, {"exact_match": 0.9, "p95_batch_ms": 800}, "tuned", None, "missed p95_batch_ms"),
        # Only quality asked: tuned (1.0) beats base_rag (2.0) on cost; RAG met quality, so warn that it costs more.
        (LADDER, {"exact_match": 0.9}, "tuned", None, "it costs 2"),
        # A bar only retrieval + tuning clears: tuned + RAG; RAG alone missed quality, so no warning.
        (LADDER, {"exact_match": 0.97}, "tuned_rag", None, None),
        # Cheap and good enough: the zero-shot prompt wins, and on a cost tie (base vs tuned at 1.0) the simpler rung.
        (LADDER, {"exact_match": 0.05}, "base", None, None),
        # RAG cheaper than tuning and good enough: RAG, no warning.
        (
            [_rung("base", 0.1, cost=1.0), _rung("base_rag", 0.95, cost=1.5), _rung("tuned", 0.95, cost=2.0)],
            {"exact_match": 0.9},
            "base_rag",
            None,
            None,
        ),
        # Nobody gets there: no winner; the closest is the smallest relative miss.
        (LADDER, {"exact_match": 0.999, "p95_batch_ms": 650}, None, "tuned", None),
        # Skipped rungs never win, even with perfect (empty) numbers.
        ([_rung("base", 0.2), _rung("tuned", 1.0, status="skipped")], {"exact_match": 0.5}, None, "base", None),
    ],
)
def test_recommendation_rule(rungs, rules, winner, closest, warning):
    rec = recommend(_gated(rungs, rules))
    assert rec.rung == winner and rec.closest == closest
    if warning:
        assert rec.warning is not None and warning in rec.warning and "RAG" in rec.warning
    else:
        assert rec.warning is None
    if winner:
        assert rec.sentence.startswith(f"Use {SPECS[winner].label}:") and rec.sentence.count(".") >= 1
    else:
        assert rec.sentence.startswith("No rung passes the gates") and SPECS[closest].label in rec.sentence


def test_recommendation_lists_the_cheaper_misses_one_rung_at_a_time():
    """Rung labels carry commas ("base, few-shot"): the cheaper rungs that miss are separated by semicolons."""
    rungs = [_rung("base", 0.0, cost=1.0), _rung("base_few_shot", 0.2, cost=1.2), _rung("tuned_rag", 0.99, cost=1.5)]
    rec = recommend(_gated(rungs, {"exact_match": 0.9}))
    assert rec.rung == "tuned_rag"
    assert f"({SPECS['base'].label}; {SPECS['base_few_shot'].label}) misses a gate" in rec.sentence


def test_recommendation_without_gates_names_the_cheapest_and_asks_for_gates():
    for rules in ({}, {"forgetting": 0.02}):  # a gate the ladder does not measure does not choose a rung
        rec = recommend(_gated(LADDER, rules))
        assert rec.rung is None and "No gates" in rec.sentence and "base, zero-shot" in rec.sentence


def _report(rungs: list[RungResult]) -> LadderReport:
    return LadderReport(
        run="r",
        base_model="m",
        n_examples=10,
        json_mode=True,
        primary_metric="exact_match",
        gates={"exact_match": 0.9},
        cost_basis="compute",
        price=1.0,
        rungs=_gated(rungs, {"exact_match": 0.9}),
        recommendation=recommend(_gated(rungs, {"exact_match": 0.9})),
    )


def test_report_round_trip_and_newer_schema_refused(tmp_path):
    report = _report(LADDER)
    write_ladder_report(tmp_path / "ladder.json", report)
    back = read_ladder_report(tmp_path / "ladder.json")
    assert back == report and back.rung("tuned").value("p95_batch_ms") == 60.0 and back.rung("nope") is None
    data = json.loads((tmp_path / "ladder.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "ladder.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match="newer"):
        read_ladder_report(tmp_path / "ladder.json")


def test_html_page_with_chart(tmp_path):
    report = _report([*LADDER, RungResult(name="student", label="distilled student", status="skipped", reason="none <named>")])
    rows = [{"id": "e1", "prompt": "<b>hi</b>", "reference": "{}", "passages": [], "outputs": {"base": "x", "tuned": "y"}}]
    write_ladder(tmp_path, report, rows)
    page = (tmp_path / "ladder.html").read_text()
    assert page.count("<img") == 1 and "data:image/png;base64," in page
    assert report.recommendation.sentence in html.unescape(page)
    assert "&lt;b&gt;hi&lt;/b&gt;" in page and "none &lt;named&gt;" in page  # text is escaped
    assert [json.loads(x)["id"] for x in (tmp_path / "predictions.jsonl").read_text().splitlines()] == ["e1"]


def test_cli_writes_the_ladder_and_never_over_earlier_output(tiny_recipe, tmp_path):
    path = tiny_recipe(ladder={"max_new_tokens": 4}, eval={"gates": {"exact_match": 0.5}})
    runner = CliRunner()
    res = runner.invoke(app, ["ladder", str(path), "--max-examples", "2"])
    assert res.exit_code == gates.GATES_FAILED_EXIT, res.output  # no rung passes: the chosen rung's gates fail
    out = tmp_path / "runs" / "tiny-ladder"
    assert "recommendation:" in res.output and "No rung passes the gates" in res.output
    assert "FAIL exact_match" in res.output and "release gates on the chosen rung" in res.output
    report = read_ladder_report(out / "ladder.json")
    assert report.n_examples == 2 and report.gates == {"exact_match": 0.5} and (out / "ladder.html").exists()
    again = runner.invoke(app, ["ladder", str(path), "--max-examples", "2"])
    assert again.exit_code not in (0, gates.GATES_FAILED_EXIT) and "already exists" in again.output
    assert runner.invoke(app, ["ladder", str(path), "--max-examples", "1", "--overwrite"]).exit_code == 3
    assert read_ladder_report(out / "ladder.json").n_examples == 1


def test_cannot_pass_bounds_a_gate_by_the_best_the_remaining_prompts_can_add():
    """A rung stops only when even perfect answers to its remaining prompts could not lift it over a gate."""
    from tunesmith.eval.ladder import cannot_pass

    def rows(valid, n):
        return [{"json_valid": float(i < valid), "json_field_accuracy": None} for i in range(n)]

    gates = {"json_valid": 0.95, "p50_batch_ms": "<=10"}  # latency is not decided early: it is no per-example mean
    why = cannot_pass(gates, rows(6, 8), 24)  # at best (6 + 16) / 24 = 0.917
    assert why is not None and "json_valid 0.750 on its first 8 prompts: at best 0.917 over all 24" in why
    assert cannot_pass(gates, rows(7, 8), 24) is None  # (7 + 16) / 24 = 0.958 can still pass
    assert cannot_pass({"json_field_accuracy": 0.9}, rows(0, 8), 24) is None  # no field scored yet: nothing known
    assert cannot_pass({"exact_match": "<=0.2"}, [{"exact_match": 1.0}] * 8, 24) is not None  # 8/24 > 0.2 whatever follows


def test_a_rung_that_cannot_change_the_recommendation_stops_early(tiny_recipe, tmp_path, monkeypatch):
    """Rungs are measured from the top down; once tuned passes every gate, base answers PROBE_ROWS prompts first and
    stops when it can no longer pass (reported with its reason and the figures of the prompts it answered); a rung
    that still could pass answers every prompt; stop_early=False measures every rung in full."""
    from helpers import chat_rows, write_jsonl
    from tunesmith.eval import generate as gen
    from tunesmith.eval import ladder as lad
    from tunesmith.eval.generate import Completion

    write_jsonl(tmp_path / "held.jsonl", chat_rows(20, seed=9))
    recipe = load_recipe(
        tiny_recipe(
            data={"eval": "held.jsonl"},
            ladder={"rungs": ["base", "tuned"], "batch_size": 4, "price_per_1k_tokens": 1.0},  # equal costs: no clock noise
            eval={"gates": {"json_valid": 0.9}},
        )
    )
    refs = {r["messages"][1]["content"]: r["messages"][2]["content"] for r in chat_rows(20, seed=9)}

    class Model:
        device = "cpu"

    base, tuned, asked = Model(), Model(), {"base": 0, "tuned": 0}
    good_base = {"n": 0}  # base's first answers valid: it can still pass until it has missed three

    def fake(model, tok, convs, max_new, batch_size=8, on_batch=None, **kw):
        side = "tuned" if model is tuned else "base"
        out = []
        for conv in convs:
            valid = side == "tuned" or good_base["n"] > 0
            good_base["n"] -= side == "base"
            out.append(Completion(refs.get(conv[-1]["content"], "{}") if valid else "no", 10, 5, "stop"))
        if max_new > 2:  # not the warm-up
            asked[side] += len(convs)
        if on_batch:
            on_batch(len(convs))
        return out

    monkeypatch.setattr(gen, "generate_detailed", fake)
    monkeypatch.setattr(
        lad,
        "load_answerers",
        lambda r, kinds: ({"base": scoring.Answerer(base, None), "tuned": scoring.Answerer(tuned, None)}, {}),
    )
    report, rows = run_ladder(recipe)
    b, t = report.rung("base"), report.rung("tuned")
    assert asked == {"tuned": 20, "base": lad.PROBE_ROWS} and t.n_examples == 20 and b.n_examples == lad.PROBE_ROWS
    assert b.status == "ok" and b.metrics["json_valid"] == 0.0 and not b.passed
    assert "stopped after 8 of 20 prompts, as it cannot change the recommendation" in b.reason and "tuned passes" in b.reason
    assert report.recommendation.rung == "tuned" and "(base, zero-shot) misses a gate" in report.recommendation.sentence
    assert sum("base" in r["outputs"] for r in rows) == lad.PROBE_ROWS

    asked.update(base=0, tuned=0)
    good_base["n"] = 8  # the first eight base answers are valid: base can still reach 0.9, so it answers all 20
    report, _ = run_ladder(recipe)
    assert asked["base"] == 20 and report.rung("base").reason is None and report.rung("base").n_examples == 20

    asked.update(base=0, tuned=0)
    report, _ = run_ladder(recipe, stop_early=False)
    assert asked == {"tuned": 20, "base": 20} and report.rung("base").reason is None
