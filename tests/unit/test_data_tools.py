"""fix, split, convert, show, the HTML report and the cost estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_checks import LONG, NEAR, chat, clean_row, write

from tunesmith.data import stats
from tunesmith.data.audit import audit
from tunesmith.data.convert import convert_file, convert_row, write_rows
from tunesmith.data.fix import fix_file, repair
from tunesmith.data.formats import RowError, load_examples, read_records
from tunesmith.data.show import nth_record, show_row
from tunesmith.data.split import split_file
from tunesmith.errors import DataError
from tunesmith.outputs import OutputError

TOKENIZER_DIR = Path(__file__).parents[1] / "fixtures" / "tiny-tokenizer"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def test_fix_repairs_drops_and_never_touches_input(tmp_path, tok):
    rows: list = [clean_row(i) for i in range(30)]
    rows[2]["messages"][1]["mood"] = "x"  # repaired: unknown key removed
    rows[4]["messages"].insert(2, {"role": "user", "content": "and also"})  # repaired: user turns merged
    rows += [
        "{not json",
        {"messages": []},
        chat("q", "  "),
        clean_row(0),
        chat("long", LONG),
        chat("w", "a" + LONG),
        chat("w", "a" + NEAR),
        chat("q", "a", weight=0),
    ]
    src = write(tmp_path / "in.jsonl", rows)
    before = src.read_bytes()
    res = fix_file(src, tmp_path / "out.jsonl", tok, max_length=96)
    assert src.read_bytes() == before
    assert res.rows_in == 38 and res.rows_out == 30
    assert dict(res.dropped) == {
        "invalid_json": 1,
        "missing_messages_list": 1,
        "empty_assistant_content": 1,
        "exact_duplicate": 1,
        "over_max_length": 3,
        "all_labels_masked": 1,
    }
    assert dict(res.repaired) == {"removed_unknown_keys": 1, "merged_user_turns": 1}
    assert any(a.startswith(f"{src}:31: dropped [invalid_json]") for a in res.actions)
    clean = audit([str(tmp_path / "out.jsonl")], tokenizer=tok, max_length=96)
    assert clean.errors == [] and {f.code for f in clean.warnings} <= {"few_examples"}
    with pytest.raises(OutputError, match="input"):
        fix_file(src, src)


def test_fix_drops_near_duplicates_and_eval_overlap(tmp_path):
    train = write(tmp_path / "train.jsonl", [clean_row(i) for i in range(20)] + [chat("w", LONG)])
    ev = write(tmp_path / "eval.jsonl", [clean_row(3), chat("w", NEAR), clean_row(50)])
    res = fix_file(ev, tmp_path / "eval.clean.jsonl", against=[str(train)])
    assert dict(res.dropped) == {"eval_overlap": 1, "eval_near_overlap": 1} and res.rows_out == 1
    assert repair({"messages": [{"role": "user", "content": 5}]})[1] == ["content_to_string"]


def test_split_is_deterministic_deduplicated_and_stratified(tmp_path):
    rows = [dict(clean_row(i), label=["a", "b"][i % 4 == 0]) for i in range(100)]
    rows += [rows[10], rows[11], chat("w", LONG), chat("w", NEAR)]
    src = write(tmp_path / "d.jsonl", rows)
    res = split_file(src, 0.2, seed=7, stratify="label")
    assert (res.n_train + res.n_eval, res.dropped_exact_duplicates, res.near_duplicate_groups) == (102, 2, 1)
    # The near-duplicate pair has no label: its own stratum, too small to split, kept together in train.
    assert res.strata == {"None": {"train": 2, "eval": 0}, "a": {"train": 60, "eval": 15}, "b": {"train": 20, "eval": 5}}
    first = (res.train.read_text(), res.eval.read_text())
    # Same content in another order: the same rows are held out.
    write(src, list(reversed(rows)))
    again = split_file(src, 0.2, seed=7, stratify="label", overwrite=True)  # replaces split's own outputs
    key = lambda text: sorted(text.splitlines())
    assert key(again.train.read_text()) == key(first[0]) and key(again.eval.read_text()) == key(first[1])
    train_ids = {json.loads(x).get("id") for x in first[0].splitlines()}
    eval_rows = [json.loads(x) for x in first[1].splitlines()]
    assert not train_ids & {r.get("id") for r in eval_rows if r.get("id")}
    # The near-duplicate pair lands on one side.
    assert sum(LONG[-30:] in x for x in first[0].splitlines()) == 2
    assert split_file(src, 0.2, seed=8, overwrite=True).eval.read_text() != first[1]


def test_convert_round_trips(tmp_path):
    src = write(tmp_path / "m.jsonl", [clean_row(i) for i in range(5)] + [chat("q", "a", weight=0)])
    res = convert_file(src, tmp_path / "a.jsonl", "alpaca")
    assert res.converted == 5 and dict(res.skipped) == {"not_convertible": 1}
    back = convert_file(tmp_path / "a.jsonl", tmp_path / "m2.parquet", "messages")
    assert back.converted == 5
    assert [e.messages for e in load_examples(str(tmp_path / "m2.parquet"))] == [e.messages for e in load_examples(str(src))[:5]]
    for fmt in ("sharegpt.csv", "pc.json", "po.jsonl.gz"):
        target = {"sharegpt.csv": "sharegpt", "pc.json": "prompt_completion", "po.jsonl.gz": "prompt_only"}[fmt]
        assert convert_file(src, tmp_path / fmt, target).converted >= 5
    assert load_examples(str(tmp_path / "sharegpt.csv"))[0].messages == clean_row(0)["messages"]
    pair = {"prompt": "q", "chosen": "good", "rejected": "bad", "id": 1}
    dpo = convert_row(pair, "openai_dpo")
    assert dpo["input"]["messages"] == [{"role": "user", "content": "q"}] and dpo["id"] == 1
    assert convert_row(dpo, "preference")["rejected"] == [{"role": "assistant", "content": "bad"}]
    with pytest.raises(RowError, match="preference"):
        convert_row(clean_row(0), "preference")


def test_write_rows_formats(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}]
    for name in ("x.jsonl", "x.json", "x.parquet", "x.csv", "x.jsonl.gz"):
        write_rows(tmp_path / name, rows)
        assert [r.obj for r in read_records(tmp_path / name)] == rows


def test_show_marks_trained_tokens(tmp_path, tok):
    src = write(tmp_path / "s.jsonl", [clean_row(0), chat("q", "a", weight=0)])
    shown = show_row(tok, nth_record(src, 1))
    trained = "".join(text for text, t in shown.segments if t)
    assert trained.startswith('{"sum"') and trained.endswith("<|im_end|>") and shown.eos_trained
    assert "Question 0" in "".join(text for text, t in shown.segments if not t)
    assert 0 < shown.n_trained < shown.n_tokens == shown.kept_tokens
    assert len(tok(trained, add_special_tokens=False)["input_ids"]) == shown.n_trained
    masked = show_row(tok, nth_record(src, 2))
    assert masked.n_trained == 0 and masked.dropped == "no_trained_tokens"
    with pytest.raises(DataError, match="fewer than 3"):
        nth_record(src, 3)


def test_html_report_has_histograms(tmp_path, tok):
    from tunesmith.data.html import write_html

    src = write(tmp_path / "t.jsonl", [clean_row(i) for i in range(12)] + ["{bad <script>"])
    report = audit([str(src)], tokenizer=tok)
    page = write_html(tmp_path / "r.html", report).read_text()
    assert page.count("data:image/png;base64,") == 2 and "invalid_json" in page and "<script>" not in page


def test_epochs_rule_and_cost():
    assert [stats.openai_epochs(n) for n in (10, 30, 34, 100, 9000, 20000)] == [10, 3, 3, 3, 2, 1]
    assert stats.openai_epochs(3) == 25
    c = stats.cost_estimate(1_000_000, 200_000, 100, params=135_000_000, gpu="h100", price_per_hour=4.0)
    assert c["epochs"] == 3 and c["trained_tokens"] == 600_000 and c["processed_tokens"] == 3_000_000
    assert c["gpu"]["price_per_hour"] == 4.0 and c["gpu"]["tokens_per_s"] > c["cpu"]["tokens_per_s"] > 0
    assert c["gpu"]["cost_usd"] == pytest.approx(c["gpu"]["hours"] * 4.0, rel=1e-3) and "assumption" in c
    assert stats.cost_estimate(10, 5, 1, params=None)["trained_tokens"] == 5 * 25
    # a recipe's max_steps sets the rows trained, as training runs them: 5 steps of 4 rows over 100 rows
    short = stats.cost_estimate(1_000, 200, 100, params=None, epochs=3, rows_per_step=4, max_steps=5)
    assert (short["steps"], short["epochs"], short["processed_tokens"]) == (5, 0.2, 200)


@pytest.mark.parametrize(
    ("training", "adapter"),
    [
        ({"max_steps": -1, "epochs": 2, "batch_size": 1}, "lora"),
        ({"max_steps": 5, "batch_size": 2, "grad_accum": 2}, "dora"),
        ({"max_steps": -1, "epochs": 1, "batch_size": 1}, "full"),
    ],
)
def test_data_check_cost_is_the_planners_estimate(tiny_recipe, monkeypatch, training, adapter):
    """`tunesmith data check`'s time and price for a recipe's rows equal `tunesmith plan`'s, on a GPU and on this
    CPU: one time and price model (plan/cost.py), the same run length, the same parameter count."""
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.config import load_recipe
    from tunesmith.models import load_tokenizer
    from tunesmith.plan import advisor
    from tunesmith.train import hardware

    monkeypatch.setattr(hardware, "gemm_gflops", lambda dtype="float32", **kw: 50.0)  # the CPU probe, fixed
    path = tiny_recipe(training=training, adapter={"type": adapter}, speed={"shared_prefix": False})
    recipe = load_recipe(path)
    for gpu in ("a100", "cpu"):
        res = CliRunner().invoke(app, ["data", "check", "--recipe", str(path), "--json", "--gpu", gpu])
        assert res.exit_code == 0, res.output
        estimate = json.loads(res.output)["stats"]["cost"]
        planned = advisor.plan(recipe, load_tokenizer(recipe.model.base), gpu)
        row = estimate["gpu" if gpu != "cpu" else "cpu"]
        assert estimate["steps"] == planned.steps and estimate["processed_tokens"] == planned.tokens
        assert estimate["params"] == planned.params
        assert row["seconds"] == pytest.approx(planned.seconds, rel=1e-9)
        assert round(row["cost_usd"], 2) == planned.usd
    d = stats.distribution([5, 1, 3, 2, 4])
    assert (d["min"], d["median"], d["max"], d["p95"]) == (1, 3, 5, 5)
