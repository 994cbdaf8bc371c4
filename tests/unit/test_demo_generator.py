"""The demo task generator: deterministic, well-formed, recoverable labels, disjoint splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.demo import generator as g

DATA_DIR = Path(g.__file__).resolve().parent / "data"


def _user(row: dict) -> str:
    return row["messages"][1]["content"]


def _record(row: dict) -> dict:
    return json.loads(row["messages"][2]["content"])


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return g.generate(500, seed=7)


@pytest.fixture(scope="module")
def splits() -> tuple[list[dict], list[dict]]:
    return g.make_splits()


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert g.generate(50, seed=3) == g.generate(50, seed=3)
    a, b = g.generate(50, seed=3), g.generate(50, seed=4)
    assert {_user(r) for r in a}.isdisjoint({_user(r) for r in b})
    assert g.make_splits(40, 10, seed=1) == g.make_splits(40, 10, seed=1)
    assert g.make_splits(40, 10, seed=1) != g.make_splits(40, 10, seed=2)


def test_row_shape(rows):
    assert len(rows) == 500
    assert [r["id"] for r in rows] == [f"demo-{i:06d}" for i in range(500)]
    for r in rows:
        assert set(r) == {"id", "messages"}
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == g.SYSTEM_PROMPT
        assert g.MIN_WORDS <= len(_user(r).split()) <= g.MAX_WORDS


def test_system_prompt_names_every_field():
    assert "Reply with only the JSON object" in g.SYSTEM_PROMPT
    for field in g.FIELDS:
        assert field in g.SYSTEM_PROMPT


def test_answer_is_compact_json_with_fixed_keys(rows):
    for r in rows:
        answer = r["messages"][2]["content"]
        rec = json.loads(answer)
        assert tuple(rec) == g.FIELDS
        assert "\n" not in answer
        # Canonical serialisation, so exact-match scoring is well defined.
        assert answer == json.dumps(rec, ensure_ascii=False, separators=(", ", ": "))
        assert rec["category"] in g.CATEGORY_CUES and rec["priority"] in g.PRIORITY_CUES
        assert rec["currency"] in g.CURRENCY_FORMS
        assert isinstance(rec["amount"], float) and rec["amount"] > 0
        assert rec["warranty"] in g.WARRANTY_TIERS


def test_values_are_recoverable_from_text(rows):
    for r in rows:
        text, rec = _user(r), _record(r)
        assert rec["customer"] in text
        assert rec["product"] in text
        assert f"{rec['amount']:.2f}" in text.replace(",", "")
        assert any(sym in text for sym, _ in g.CURRENCY_FORMS[rec["currency"]])


def test_catalog_fields_come_only_from_the_catalog(rows):
    catalog = g.catalog()
    assert set(catalog) == set(g.PRODUCTS)
    assert len({c["sku"] for c in catalog.values()}) == len(g.PRODUCTS)  # a SKU names one product
    for r in rows:
        text, rec = _user(r), _record(r)
        assert {k: rec[k] for k in g.CATALOG_FIELDS} == catalog[rec["product"]]
        assert rec["sku"] not in text  # knowledge the message itself never supplies
        # Exactly one catalog product is named, so the retrieval query points at one entry.
        assert [p for p in g.PRODUCTS if p in text] == [rec["product"]]


def test_shipped_catalog_matches_generator(tmp_path):
    shipped = DATA_DIR.parent / "catalog"
    written = g.write_catalog(tmp_path)
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in written)
    for p in written:
        assert p.read_bytes() == (shipped / p.name).read_bytes()
        text = p.read_text(encoding="utf-8")
        product = text.splitlines()[0].removeprefix("# ")
        assert g.catalog()[product]["sku"] in text and g.catalog()[product]["warranty"] in text


@pytest.mark.parametrize("field,cues", [("category", g.CATEGORY_CUES), ("priority", g.PRIORITY_CUES)])
def test_labels_follow_exactly_one_cue_set(rows, field, cues):
    for r in rows:
        text, label = _user(r).lower(), _record(r)[field]
        hits = {k for k, phrases in cues.items() if any(p in text for p in phrases)}
        assert hits == {label}, (r["id"], hits, label)


def test_no_duplicate_user_texts(rows, splits):
    assert len({_user(r) for r in rows}) == len(rows)
    train, eval_ = splits
    texts = [_user(r) for r in train + eval_]
    assert len(set(texts)) == len(texts)


def test_splits_are_disjoint(splits):
    train, eval_ = splits
    assert (len(train), len(eval_)) == (400, 60)
    ids = [r["id"] for r in train + eval_]
    assert len(set(ids)) == len(ids)
    assert {_user(r) for r in train}.isdisjoint(_user(r) for r in eval_)
    pairs = lambda rs: {(_record(r)["customer"], _record(r)["product"]) for r in rs}
    assert pairs(train).isdisjoint(pairs(eval_))
    # Eval customers are unseen people, not merely unseen pairs.
    assert {_record(r)["customer"] for r in train}.isdisjoint(_record(r)["customer"] for r in eval_)
    # Eval products are unseen catalog entries: their SKU and warranty never appear in train.
    assert {_record(r)["product"] for r in eval_} == set(g.EVAL_ONLY_PRODUCTS)
    assert {_record(r)["sku"] for r in train}.isdisjoint(_record(r)["sku"] for r in eval_)


def test_eval_covers_every_label(splits):
    eval_recs = [_record(r) for r in splits[1]]
    assert {r["category"] for r in eval_recs} == set(g.CATEGORY_CUES)
    assert {r["priority"] for r in eval_recs} == set(g.PRIORITY_CUES)


def test_shipped_data_matches_defaults(splits, tmp_path):
    train, eval_ = splits
    for name, expected in (("train.jsonl", train), ("eval.jsonl", eval_)):
        lines = (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == expected
    # Byte-for-byte too: regenerating must reproduce the shipped files exactly.
    written = g.write_splits(tmp_path)
    assert [p.name for p in written] == ["train.jsonl", "eval.jsonl"]
    for p in written:
        assert p.read_bytes() == (DATA_DIR / p.name).read_bytes()


def test_write_splits_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "nested" / "dir"
    train_p, eval_p = g.write_splits(out, n_train=12, n_eval=5, seed=9)
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "train.jsonl"]
    train, eval_ = g.make_splits(12, 5, seed=9)
    assert [json.loads(x) for x in train_p.read_text(encoding="utf-8").splitlines()] == train
    assert [json.loads(x) for x in eval_p.read_text(encoding="utf-8").splitlines()] == eval_
    # Overwriting in place works and still leaves only the two files behind.
    g.write_splits(out, n_train=3, n_eval=2, seed=1)
    assert len(train_p.read_text(encoding="utf-8").splitlines()) == 3
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "train.jsonl"]
