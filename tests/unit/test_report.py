"""Behaviour of tunesmith.eval.report: PNG output and the self-contained HTML page; the typed records it renders."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tunesmith import atomic
from tunesmith.eval import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pred(i: int, judgement: str, base_em: float, tuned_em: float, **text: str) -> dict:
    return {
        "id": f"ex-{i}",
        "prompt": text.get("prompt", f"prompt {i}"),
        "reference": text.get("reference", f"reference {i}"),
        "base": text.get("base", f"base output {i}"),
        "tuned": text.get("tuned", f"tuned output {i}"),
        "base_metrics": {"exact_match": base_em, "token_f1": base_em, "rouge_l": base_em},
        "tuned_metrics": {"exact_match": tuned_em, "token_f1": tuned_em, "rouge_l": tuned_em},
        "judgement": judgement,
    }


def _report() -> dict:
    return {
        "run": "demo-run",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "n_examples": 3,
        "json_mode": False,
        "summary": {
            "base": {"exact_match": 0.25, "token_f1": 0.5, "bleu": 20.0, "eval_loss": 2.0, "perplexity": 7.39},
            "tuned": {"exact_match": 0.5, "token_f1": 0.4, "bleu": 30.0, "eval_loss": 1.5, "perplexity": 4.48},
            "delta": {"exact_match": 0.25, "token_f1": -0.1, "bleu": 10.0, "eval_loss": -0.5, "perplexity": -2.91},
        },
        "judgement": {"wins": 1, "losses": 1, "ties": 1, "win_rate": 1 / 3},
    }


HISTORY = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}, {"step": 20, "eval_loss": 1.6}]


def test_loss_curve_png_bytes_and_file(tmp_path):
    out = tmp_path / "loss.png"
    data = R.loss_curve_png(HISTORY, out)
    assert data.startswith(PNG_MAGIC)
    assert out.read_bytes() == data


def test_loss_curve_png_empty_history_still_png():
    assert R.loss_curve_png([]).startswith(PNG_MAGIC)
    # rows with nothing plottable behave like empty history
    assert R.loss_curve_png([{"step": 1, "learning_rate": 1e-4}]).startswith(PNG_MAGIC)


def test_metrics_chart_png():
    assert R.metrics_chart_png(_report()["summary"]).startswith(PNG_MAGIC)
    assert R.metrics_chart_png({"base": {}, "tuned": {}}).startswith(PNG_MAGIC)


def test_write_html_escapes_and_is_self_contained(tmp_path):
    evil = '<script>alert("x")</script>'
    preds = [
        _pred(0, "loss", 1.0, 0.0, tuned=evil, prompt="What is 1 < 2 & 3?"),
        _pred(1, "win", 0.0, 1.0),
        _pred(2, "tie", 0.5, 0.5),
    ]
    path = R.write_html(tmp_path / "report.html", _report(), preds, HISTORY)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")

    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "What is 1 &lt; 2 &amp; 3?" in page
    assert "demo-run" in page and "SmolLM2-135M-Instruct" in page
    assert "Worst regressions" in page and "Best improvements" in page
    # no external assets: every src is an inline data URI, no stylesheet links
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 2
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "<link" not in page and "http://" not in page and "https://" not in page


def test_write_html_table_and_colours(tmp_path):
    page = R.write_html(tmp_path / "r.html", _report(), [], []).read_text(encoding="utf-8")
    assert re.search(
        r"<td>exact_match</td><td class=\"num\">0\.2500</td><td class=\"num\">0\.5000</td>"
        r"<td class=\"num good\">\+0\.2500</td>",
        page,
    )
    assert 'class="num bad">-0.1000</td>' in page
    # eval_loss went down: that is an improvement, so green despite the negative sign
    assert re.search(r"<td>eval_loss</td>.*?<td class=\"num good\">-0\.5000</td>", page)
    assert "wins 1" in page and "losses 1" in page and "ties 1" in page and "33.3%" in page


def test_regressions_only_losses_worst_first_and_capped(tmp_path):
    preds = [_pred(i, "loss", 1.0, i / 20, tuned=f"TUNED-{i:02d}") for i in range(12)]
    preds.append(_pred(99, "tie", 1.0, 1.0, tuned="TUNED-TIE"))
    page = R.write_html(tmp_path / "r.html", _report(), preds, HISTORY).read_text(encoding="utf-8")
    regressions = page.split("Worst regressions", 1)[1].split("Best improvements", 1)[0]
    shown = re.findall(r"TUNED-\d\d", regressions)
    # biggest drop (tuned 0.0) first, capped at 10 so the two mildest losses are left out
    assert shown == [f"TUNED-{i:02d}" for i in range(10)]
    assert "TUNED-TIE" not in page


def test_write_html_atomic_leaves_no_temp_and_overwrites(tmp_path):
    target = tmp_path / "out" / "report.html"
    R.write_html(target, _report(), [], HISTORY)
    R.write_html(target, {**_report(), "run": "second-run"}, [], HISTORY)
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]
    assert "second-run" in target.read_text(encoding="utf-8")


def test_write_html_failure_cleans_temp_and_keeps_old(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    try:
        R.write_html(target, _report(), [], HISTORY)
    except OSError:
        pass
    else:
        raise AssertionError("write_html should re-raise the failure")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert target.read_text(encoding="utf-8") == "old"


# --- the typed records ----------------------------------------------------------------------------------------------

RECORDS = Path(__file__).resolve().parents[1] / "fixtures" / "records"


def test_an_eval_report_written_by_schema_1_reads_typed(tmp_path):
    """eval-report-v1.json was written by the release before typed extras: every part reads as its record."""
    from tunesmith.eval.gates import gate_values
    from tunesmith.records import EVAL_REPORT_VERSION, Forgetting, GateResult, read_eval_report, write_eval_report

    report = read_eval_report(RECORDS / "eval-report-v1.json")
    assert report.schema_version == EVAL_REPORT_VERSION == 2
    assert all(isinstance(g, GateResult) for g in report.gates) and report.gates[2].name == "beats_base"
    assert isinstance(report.extra.forgetting, Forgetting) and report.extra.forgetting.categories["json"].n == 7
    assert report.extra.judge is not None and report.extra.judge.orders["tuned_first"].ties == 6
    assert report.extra.graders["exact"]["tuned"].pass_rate == 0.0
    assert report.extra.hallucination is not None and report.extra.hallucination.rate is None
    tuned = report.extra.latency["tuned"]  # schema 1's p50_ms/p95_ms: the wall time of the batch, now named so
    assert tuned.p95_batch_ms == pytest.approx(771.81073) and tuned.p95_request_ms is None
    assert gate_values(report)["p95_batch_ms"] == tuned.p95_batch_ms
    write_eval_report(tmp_path / "report.json", report)
    assert read_eval_report(tmp_path / "report.json") == report
    raw = json.loads((tmp_path / "report.json").read_text())
    assert raw["schema_version"] == 2 and raw["extra"]["latency"]["tuned"]["p95_batch_ms"] == tuned.p95_batch_ms


def test_a_typo_in_an_eval_extra_is_an_error_not_a_default(tmp_path):
    from tunesmith.errors import RunError
    from tunesmith.records import read_eval_report

    raw = json.loads((RECORDS / "eval-report-v1.json").read_text())
    raw["extra"]["forgeting"] = raw["extra"].pop("forgetting")
    (tmp_path / "report.json").write_text(json.dumps(raw))
    with pytest.raises(RunError, match="extra.forgeting"):
        read_eval_report(tmp_path / "report.json")


def test_a_ladder_written_by_schema_1_reads_with_gates_and_one_clock():
    from tunesmith.eval.ladder_report import read_ladder_report
    from tunesmith.records import Latency

    ladder = read_ladder_report(RECORDS / "ladder-v1.json")
    assert ladder.schema_version == 2 and ladder.gates == {"exact_match": 0.5, "p95_latency_ms": 100000.0}
    base = ladder.rung("base")
    assert base is not None and isinstance(base.latency, Latency) and base.latency.total_s == pytest.approx(0.128097)
    assert base.value("p95_batch_ms") == pytest.approx(128.096914) and base.value("cost_per_1k") == base.cost_per_1k
