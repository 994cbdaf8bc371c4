"""Blind review: the statistics against hand-worked values, blindness, verdict mapping, export shapes."""

from __future__ import annotations

import json

import pytest

from studio_helpers import fake_run
from tunesmith.errors import RunError, TunesmithError
from tunesmith.studio import review
from tunesmith.studio.agreement import cohen_kappa, fleiss_kappa, wilson


def test_wilson_matches_the_textbook_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == pytest.approx(1.0)


def test_cohen_kappa_hand_worked():
    # 10 items: both say y on 4, both x on 3, disagree on 3. p_o = .7; p_e = (.6*.5 + .4*.5) = .5 -> kappa .4
    a = ["y"] * 4 + ["x"] * 3 + ["y", "y", "x"]
    b = ["y"] * 4 + ["x"] * 3 + ["x", "x", "y"]
    assert cohen_kappa(a, b) == pytest.approx((0.7 - 0.5) / 0.5)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert cohen_kappa([], []) is None


def test_fleiss_kappa_wikipedia_example():
    # The worked example from Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [[str(c) for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=1e-3)
    with pytest.raises(ValueError):
        fleiss_kappa([["x", "y"], ["x"]])


def test_item_outcome_majority_and_min_agree():
    assert review.item_outcome(["y", "y", "x"]) == "y"
    assert review.item_outcome(["y", "x"]) is None  # a tie between verdicts decides nothing
    assert review.item_outcome(["y", "y", "x"], min_agree=3) is None
    assert review.item_outcome(["tie"]) == "tie"


@pytest.fixture
def store(tmp_path):
    run_dir = fake_run(tmp_path, "r1", n_examples=8)
    from tunesmith.studio.runs import predictions

    items = review.items_from_predictions(predictions(run_dir), {})
    s = review.ReviewStore.open(run_dir)
    rnd = s.create_round("r", "base", "tuned", items)
    yield s, rnd
    s.close()


def test_blind_order_is_random_per_reviewer_and_choices_map_back(store):
    s, rnd = store
    items = s.items(rnd.id)
    orders = {(i.id, r): s.swapped(rnd.id, i.id, r) for i in items for r in ("ann", "bob", "cy")}
    assert len(set(orders.values())) == 2  # both orders occur
    assert s.swapped(rnd.id, items[0].id, "ann") == orders[(items[0].id, "ann")]  # stable across calls
    for item in items:
        a, _ = s.shown(item, "ann")
        v = s.record(item, "ann", "a")
        assert (item.answer_y if v.choice == "y" else item.answer_x) == a  # "A" means whatever was shown as A
    assert s.path == review.db_path(s.path.parent.parent)


def test_stats_two_reviewers_win_rate_and_kappa(store):
    s, rnd = store
    items = s.items(rnd.id)
    want = {"ann": ["y", "y", "y", "y", "x", "x", "tie", "bad"], "bob": ["y", "y", "y", "x", "x", "x", "tie", "bad"]}
    for reviewer, sides in want.items():
        for item, side in zip(items, sides, strict=True):
            a_is_y = s.swapped(rnd.id, item.id, reviewer)
            shown = side if side in ("tie", "bad") else ("a" if (side == "y") == a_is_y else "b")
            s.record(item, reviewer, shown, correction="fixed" if side == "bad" else "")
    st = review.compute_stats(items, s.verdicts(rnd.id))
    assert st.outcomes == {"x": 2, "y": 3, "tie": 1, "bad": 1} and st.counted == 7  # item 4 is split 1-1
    assert st.win_rate == pytest.approx(3 / 5)
    assert (st.ci_low, st.ci_high) == pytest.approx(wilson(3, 5))
    assert st.kappa_kind == "cohen" and st.kappa == pytest.approx(cohen_kappa(want["ann"], want["bob"]))
    assert st.disagreements == [items[3].id]
    strict = review.compute_stats(items, s.verdicts(rnd.id), min_agree=3)
    assert strict.counted == 0 and strict.win_rate is None


def test_export_sft_and_dpo_rows_audit_clean(store, tmp_path):
    s, rnd = store
    items = s.items(rnd.id)
    s.record(items[0], "ann", "bad", correction='{"sum": 1}')
    a_is_y = s.swapped(rnd.id, items[1].id, "ann")
    s.record(items[1], "ann", "a" if a_is_y else "b")  # ann prefers y (tuned) on item 1
    sft = review.export_rows(items, s.verdicts(rnd.id), "sft")
    corrected = [*items[0].messages, {"role": "assistant", "content": '{"sum": 1}'}]
    assert sft == [{"id": f"review-{items[0].id}-ann", "messages": corrected}]
    dpo = review.export_rows(items, s.verdicts(rnd.id), "dpo")
    if items[1].answer_x != items[1].answer_y:
        assert dpo == [
            {
                "input": {"messages": items[1].messages},
                "preferred_output": [{"role": "assistant", "content": items[1].answer_y}],
                "non_preferred_output": [{"role": "assistant", "content": items[1].answer_x}],
            }
        ]
    out = tmp_path / "sft.jsonl"
    summary = review.write_export(sft, out)
    assert summary.rows == 1 and json.loads(out.read_text().splitlines()[0])["messages"][-1]["content"] == '{"sum": 1}'
    assert summary.by_code == {"too_few_examples": 1}  # audited: the rows are well formed, the file is just small
    if dpo:
        from tunesmith.data.formats import detect_shape

        assert detect_shape(dpo[0]) == "openai_dpo"
        assert review.write_export(dpo, tmp_path / "dpo.jsonl").by_code == {"too_few_examples": 1}
    with pytest.raises(TunesmithError, match="already exists"):
        review.write_export(sft, out)  # never over an existing file


def test_closed_round_refuses_verdicts(store):
    s, rnd = store
    s.close_round(rnd.id)
    with pytest.raises(RunError, match="closed"):
        s.record(s.items(rnd.id)[0], "ann", "a")


def test_cli_review_stats_and_export(store, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    s, rnd = store
    run_dir = s.path.parent.parent
    for item in s.items(rnd.id):
        s.record(item, "ann", "tie", correction="a better answer")
    runner = CliRunner()
    res = runner.invoke(app, ["review", "stats", str(run_dir)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "tie 8" in res.output and "n/a" in res.output
    out = tmp_path / "fixes.jsonl"
    res = runner.invoke(app, ["review", "export", str(run_dir), "--to", "sft", "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "8 rows" in res.output and len(out.read_text().splitlines()) == 8
    res = runner.invoke(app, ["review", "export", str(run_dir), "--to", "dpo", "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code != 0 and "nothing to export" in res.output  # all ties: no preference to export
    assert runner.invoke(app, ["review", "stats", str(tmp_path)]).exit_code != 0  # no review in this folder
