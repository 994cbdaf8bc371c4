"""Every table the command line prints stays readable in an 80-column terminal: no cell is cut to "bas…"."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import tunesmith
from tunesmith.eval import gates
from tunesmith.eval.ladder import SPECS
from tunesmith.eval.ladder_report import LadderReport, Latency, RungResult
from tunesmith.eval.recommend import recommend
from tunesmith.records import EvalReport, Judgement
from tunesmith.tables import Table


def render(table: object, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(table)
    return console.export_text()


def assert_readable(text: str, width: int, *figures: str) -> None:
    assert "…" not in text, text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width, text
    for figure in figures:  # each figure whole on one line, as printed
        assert re.search(rf"(^|[\s│┃]){re.escape(figure)}($|[\s│┃])", text, re.M), f"{figure!r} not whole in:\n{text}"


def _rung(name: str, em: float) -> RungResult:
    return RungResult(
        name=name,
        label=SPECS[name].label,
        n_examples=12,
        metrics={"exact_match": em, "json_valid": 1.0, "json_field_accuracy": 0.6125, "token_f1": 0.7333},
        latency=Latency(p50_batch_ms=1234.0, p95_batch_ms=2345.0),
        prompt_tokens=156.0,
        completion_tokens=48.0,
        cost_per_1k=0.0123,
    )


def ladder_report() -> LadderReport:
    rules = {"exact_match": 0.9, "json_field_accuracy": 0.95}
    rungs = [_rung(n, em) for n, em in [("base", 0.1), ("base_few_shot", 0.3), ("base_rag", 0.5), ("tuned", 0.92)]]
    rungs = [r.model_copy(update={"gates": gates.check_rules(rules, r.values(), where="ladder")}) for r in rungs]
    rungs.append(RungResult(name="student", label=SPECS["student"].label, status="skipped", reason="no student run"))
    return LadderReport(
        run="tickets-lora",
        base_model="SmolLM2-135M-Instruct",
        n_examples=12,
        json_mode=True,
        primary_metric="exact_match",
        gates=rules,
        cost_basis="compute",
        price=1.0,
        rungs=rungs,
        recommendation=recommend(rungs),
    )


def test_the_ladder_table_is_whole_at_80_columns() -> None:
    from tunesmith.eval.ladder_table import ladder_table

    text = render(ladder_table(ladder_report()))
    assert_readable(text, 80, "0.100", "0.920", "0.613", "1234", "2345", "156", "0.0123", "exact_match")
    for label in (SPECS[n].label for n in ("base", "base_few_shot", "base_rag", "tuned")):
        assert all(word in text for word in label.split())


def test_the_ladder_summary_the_cli_and_the_demo_print(tmp_path) -> None:
    """The library's ladder for a terminal: the table, then the recommendation and the report's files."""
    from tunesmith.eval.ladder_table import ladder_summary

    report = ladder_report()
    text = render(ladder_summary(report, tmp_path))
    assert "exact_match" in text and "recommendation: " + report.recommendation.sentence[:20] in text
    assert f"report: {tmp_path / 'ladder.html'}" in text.replace("\n", "")


def test_the_eval_table_is_whole_at_80_columns() -> None:
    from tunesmith.cli.evaluate import comparison_table

    names = ["exact_match", "json_field_accuracy", "semantic_similarity", "p95_batch_ms", "graders.ticket_category"]
    summary = {
        "base": {n: 0.1234 for n in names},
        "tuned": {n: 0.5678 for n in names},
        "delta": {n: 0.4444 for n in names},
    }
    report = EvalReport(
        run="runs/a-rather-long-run-name-for-the-title",
        base_model="m",
        n_examples=40,
        json_mode=True,
        chat_template_sha256="x",
        summary=summary,
        judgement=Judgement(),
    )
    assert_readable(render(comparison_table(report)), 80, "graders.ticket_category", "0.1234", "+0.4444")


def test_the_monitor_and_rollout_tables_are_whole_at_80_columns() -> None:
    from tunesmith.cli.monitor import replica_table, signal_table, variant_table
    from tunesmith.cli.rollout import figures_table
    from tunesmith.monitor.report import VARIANT_FIGURES

    signal = SimpleNamespace(
        name="prompt_embedding_mmd",
        reference="training data",
        recent=0.31415,
        baseline=0.02718,
        statistic=0.28697,
        rule="p < 0.01",
        status="drift",
        detail="recent prompts are farther from the training prompts than the training prompts are from each other",
    )
    report = SimpleNamespace(
        recent=SimpleNamespace(requests=1200),
        earlier=SimpleNamespace(requests=1100),
        baseline=True,
        signals=[signal, signal],
        replicas=[SimpleNamespace(replica="replica-eu-west-1a", requests=600, answered=590, errors=10, latency_p95_s=1.25)],
        variants=[
            SimpleNamespace(model="tickets", variant=v, figures={f: 0.01234 for f in VARIANT_FIGURES})
            for v in ("primary", "candidate")
        ],
    )
    assert_readable(render(signal_table(report)), 80, "prompt_embedding_mmd", "0.3141", "0.02718", "DRIFT")
    assert_readable(render(replica_table(report)), 80, "replica-eu-west-1a", "1.25")
    assert_readable(render(variant_table(report)), 80, "candidate", "0.01234", "output_drift_p")
    figures = {v: {f: 0.5678 for f in ("requests", "error_rate", "latency_p95_s", "down_rate")} for v in ("primary", "candidate")}
    assert_readable(render(figures_table(SimpleNamespace(figures=figures))), 80, "latency_p95_s", "0.5678")


@pytest.mark.parametrize("width", [80, 60, 40])
def test_a_wide_table_splits_its_columns_and_cuts_no_cell(width: int) -> None:
    table = Table("rung", *(f"metric_number_{i}" for i in range(9)), title="wide", caption="the caption")
    for name in ("baseline", "fine-tuned + RAG"):
        table.add_row(name, *(f"{i}.123456" for i in range(9)))
    text = render(table, width)
    assert_readable(text, width, *(f"metric_number_{i}" for i in range(9)), *(f"{i}.123456" for i in range(9)))
    assert text.count("baseline") > 1  # the first column repeats in every part
    assert text.count("wide") == 1 and text.count("the caption") == 1


def test_a_table_that_fits_is_rich_s_own() -> None:
    """Nothing changes for a table the terminal has room for."""
    table = Table("a", "b")
    table.add_row("1", "2")
    from rich.table import Table as RichTable

    reference = RichTable("a", "b", title_justify="left", caption_justify="left")
    reference.add_row("1", "2")
    assert render(table) == render(reference)


def test_every_terminal_table_uses_the_fitting_table() -> None:
    """rich's own Table is imported by tunesmith/tables.py only, so no command prints a table that cuts cells."""
    src = Path(tunesmith.__file__).parent
    direct = []
    for path in src.rglob("*.py"):
        if path.name == "tables.py" and path.parent == src:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "rich.table":
                direct.append(f"{path.relative_to(src.parent)}:{node.lineno}")
    assert not direct, "tables built with rich.table directly (use tunesmith.tables.Table):\n" + "\n".join(direct)
