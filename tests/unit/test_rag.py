"""Retrieval: chunking with line numbers, the LanceDB index (incremental, hashed, refusing foreign folders), hybrid
search, retrieval metrics, and the one prompt builder that training and eval share. Uses the bundled MiniLM."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import write_jsonl
from tunesmith.errors import DataError
from tunesmith.rag.chunk import chunk_lines, read_lines
from tunesmith.rag.embed import load_embedder
from tunesmith.rag.index import build_index, content_hash, read_meta
from tunesmith.rag.prompt import augment, retrieval_query, with_context
from tunesmith.rag.retrieve import Passage, Retriever, mrr, recall_at_k

DOC_A = """# Billing

Invoices are sent on the first day of each month. Late payments incur a fee of 2 percent.

# Refunds

Customers may ask for a refund within 30 days. The Zorblax-9 form must be attached to every refund request.
"""
DOC_B = """# Shipping

Parcels leave the warehouse in Rotterdam every Tuesday. Delivery across Europe takes three to five working days.
"""


class CountingEmbedder:
    """The bundled MiniLM, counting how many texts it embeds."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def encode(self, texts):
        self.calls += len(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="session")
def minilm():
    return load_embedder(None)


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "billing.md").write_text(DOC_A, encoding="utf-8")
    (folder / "shipping.md").write_text(DOC_B, encoding="utf-8")
    return folder


@pytest.fixture
def index(docs, tmp_path, minilm) -> Path:
    build_index([docs], tmp_path / "idx", embedder=minilm, chunk_chars=200, overlap_chars=40)
    return tmp_path / "idx"


def test_chunks_follow_headings_and_sentences_with_overlap_and_lines():
    text = "# One\n\n" + " ".join(f"Sentence number {i} is here." for i in range(12)) + "\n\n# Two\n\nShort tail.\n"
    lines = list(enumerate(text.splitlines(), start=1))
    chunks = chunk_lines(lines, chunk_chars=120, overlap_chars=40)
    assert all(len(c.text) <= 120 for c in chunks)
    assert chunks[-1].text == "# Two Short tail." and chunks[-1].line == 5  # a heading starts a new chunk, at its line
    assert not any("# Two" in c.text for c in chunks[:-1])
    first, second = chunks[0].text, chunks[1].text
    assert first.startswith("# One") and all(c.text.rstrip().endswith(".") for c in chunks)  # whole sentences
    assert second.split(". ")[0] + "." in first  # consecutive chunks share a sentence (the overlap)
    with pytest.raises(DataError):
        chunk_lines(lines, chunk_chars=100, overlap_chars=100)


def test_source_lines_for_markdown_html_and_jsonl(tmp_path):
    md = tmp_path / "a.md"
    md.write_text("intro\n\n\n# Head\n\nfirst line of para\ncontinues here. Second sentence.\n", encoding="utf-8")
    chunks = chunk_lines(read_lines(md), 50, 0)
    assert [(c.line, c.end_line) for c in chunks] == [(1, 1), (4, 7), (7, 7)]
    assert chunks[1].text == "# Head first line of para continues here."
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><script>var secret = 'do not index';</script><style>p{}</style></head>\n"
        "<body>\n<h2>Team</h2>\n<p>Alice runs <b>ops</b> &amp; support.</p>\n</body></html>",
        encoding="utf-8",
    )
    text = " ".join(c.text for c in chunk_lines(read_lines(page), 400, 0))
    assert "secret" not in text and "p{}" not in text and "Alice runs ops & support." in text
    assert chunk_lines(read_lines(page), 400, 0)[0].line == 3
    rows = write_jsonl(tmp_path / "r.jsonl", [{"text": "alpha fact."}, {"messages": [{"role": "user", "content": "beta fact."}]}])
    assert [(c.text, c.line) for c in chunk_lines(read_lines(rows), 400, 0)] == [("alpha fact.", 1), ("beta fact.", 2)]
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(tiny_pdf(["Hello first page.", "Second page fact."]))
    pages = [(c.text, c.line) for c in chunk_lines(read_lines(pdf), 400, 0)]
    assert pages == [("Hello first page.", 1), ("Second page fact.", 2)]
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(DataError, match="broken.pdf"):
        read_lines(tmp_path / "broken.pdf")


def tiny_pdf(pages: list[str]) -> bytes:
    """A minimal PDF with one line of Helvetica text per page (no PDF writer needed)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objs)} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(f"{len(objs)} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = "%PDF-1.4\n", []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    return (out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").encode("latin-1")


def test_hybrid_fuses_keyword_and_paraphrase_hits(index):
    retriever = Retriever.open(index)
    assert retriever is Retriever.open(index)  # cached per path: one model load per process
    keyword = retriever.search("Zorblax-9", k=3, mode="fts")
    assert keyword[0].source == "docs/billing.md" and "Zorblax-9" in keyword[0].text
    paraphrase = "how long until my package arrives"
    assert retriever.search(paraphrase, k=3, mode="fts") == []  # no shared word: full text cannot find it
    assert "Delivery across Europe" in retriever.search(paraphrase, k=1, mode="vector")[0].text
    hybrid = retriever.search(f"{paraphrase} Zorblax-9", k=3)
    texts = [p.text for p in hybrid[:2]]
    assert any("Zorblax-9" in t for t in texts) and any("Delivery" in t for t in texts)  # each list's winner survives RRF
    assert all(0 < p.score <= 2 / 61 for p in hybrid)  # RRF: at most 1/(60+1) from each of the two lists
    assert retriever.search("   ", k=3) == [] and retriever.search('<script>"AND OR (', k=2) is not None


def test_recall_and_mrr_on_a_hand_made_set():
    def p(source, line, end, cid):
        return Passage("t", source, line, 0.0, cid, end)

    results = [[p("docs/a.md", 1, 5, "x"), p("docs/b.md", 10, 12, "y")], [p("docs/c.md", 1, 2, "z")], [p("docs/a.md", 1, 5, "x")]]
    gold = [["b.md:11"], ["z"], ["docs/d.md"]]
    assert recall_at_k(results, gold, k=1) == pytest.approx(1 / 3)
    assert recall_at_k(results, gold, k=2) == pytest.approx(2 / 3)
    assert mrr(results, gold) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_incremental_rebuild_embeds_only_changed_files(docs, tmp_path, minilm):
    counter = CountingEmbedder(minilm)
    out = tmp_path / "idx"
    first = build_index([docs], out, embedder=counter, chunk_chars=200, overlap_chars=40)
    assert first.files_embedded == 2 and counter.calls == first.chunks_embedded == first.chunks
    assert build_index([docs], out, embedder=counter, chunk_chars=200, overlap_chars=40).chunks_embedded == 0
    assert counter.calls == first.chunks and content_hash(out) == first.content_hash  # stable across rebuilds
    (docs / "shipping.md").write_text(DOC_B + "\nReturns go back to Rotterdam.\n", encoding="utf-8")
    third = build_index([docs], out, embedder=counter, chunk_chars=200, overlap_chars=40)
    shipping_chunks = read_meta(out).files[str((docs / "shipping.md").resolve())].chunks
    assert third.files_embedded == 1 and third.files_reused == 1 and third.chunks_embedded == shipping_chunks
    assert counter.calls == first.chunks + shipping_chunks
    assert content_hash(out) != first.content_hash and third.chunks == Retriever.open(out).table.count_rows()
    moved = tmp_path / "elsewhere" / "docs"  # the same documents in another place: nothing to embed again
    shutil.copytree(docs, moved)
    fourth = build_index([moved], out, embedder=counter, chunk_chars=200, overlap_chars=40)
    assert fourth.chunks_embedded == 0 and fourth.files_removed == 2 and content_hash(out) == third.content_hash
    assert {r["path"] for r in Retriever.open(out).table.to_arrow().to_pylist()} == {str(p.resolve()) for p in moved.iterdir()}


def test_refuses_a_foreign_non_empty_folder(docs, tmp_path, minilm):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match="did not create"):
        build_index([docs], foreign, embedder=minilm)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_with_context_default_and_template():
    passages = [Passage("Paris is the capital.", "geo.md", 3, 0.9, "c1")]
    no_system = [{"role": "user", "content": "Capital of France?"}]
    out = with_context(no_system, passages)
    assert out[0] == {"role": "system", "content": "Context:\n[1] (geo.md:3) Paris is the capital."} and out[1:] == no_system
    with_sys = [{"role": "system", "content": "Be brief."}, *no_system]
    assert with_context(with_sys, passages)[0]["content"].startswith("Be brief.\n\nContext:\n[1]")
    assert with_sys[0]["content"] == "Be brief."  # input untouched
    fmt = with_context(no_system, passages, "Q: {question}\nUse:\n{context}")
    assert fmt[-1]["content"] == "Q: Capital of France?\nUse:\n[1] (geo.md:3) Paris is the capital."
    jinja = with_context(no_system, passages, "{{ question }} | {{ context }}")
    assert jinja[-1]["content"] == "Capital of France? | [1] (geo.md:3) Paris is the capital."
    assert retrieval_query([*with_sys, {"role": "assistant", "content": "Paris"}]) == "Capital of France?"


def test_augment_retrieves_for_the_last_user_turn(index):
    messages = [{"role": "user", "content": "Which form goes with a refund request?"}]
    out, passages = augment(messages, Retriever.open(index), k=2)
    assert "Zorblax-9" in passages[0].text and out == with_context(messages, passages)
    assert json.dumps(out).count("[1] (docs/billing.md:") == 1


def test_training_and_eval_see_the_prompt_augment_builds(docs, tmp_path, minilm, tiny_recipe):
    from tunesmith.config import load_recipe
    from tunesmith.data.dataset import recipe_examples, split_examples
    from tunesmith.data.template import tokenize_example
    from tunesmith.models import load_tokenizer
    from tunesmith.rag.index import changed_since
    from tunesmith.run import load_run
    from tunesmith.train import sft
    from tunesmith.train.methods import eval_examples, evaluate, held_out_examples

    build_index([docs], tmp_path / "idx", embedder=minilm, chunk_chars=200, overlap_chars=40)
    recipe = load_recipe(tiny_recipe(rag={"index": "idx", "k": 1}, data={"max_length": 512}))
    retriever = Retriever.open(tmp_path / "idx")
    raw_train, raw_eval = split_examples(recipe.data, recipe.training.seed)
    train_ex, _ = recipe_examples(recipe)
    expected = [augment(e.messages, retriever, k=1)[0] for e in raw_train]
    assert [e.messages for e in train_ex] == expected
    assert expected[0][0]["content"].startswith("Answer with JSON.\n\nContext:\n[1] (docs/")
    assert [e.messages for e in eval_examples(recipe)] == [augment(e.messages, retriever, k=1)[0] for e in raw_eval]

    tokenizer = load_tokenizer(recipe.model.base)
    train_ds = sft.METHOD.datasets(recipe, tokenizer).train
    assert train_ds[0]["input_ids"] == tokenize_example(tokenizer, expected[0], 512, "drop").input_ids  # what training tokenizes

    run = sft.run(recipe)
    assert run.manifest.rag == {
        "index": str(tmp_path / "idx"),
        "content_hash": content_hash(tmp_path / "idx"),
        "k": 1,
        "embedder": "all-MiniLM-L6-v2",
        "mode": "hybrid",
    }
    assert [e.messages for e in held_out_examples(run)] == [augment(e.messages, retriever, k=1)[0] for e in raw_eval]
    assert changed_since(run) is None
    (docs / "shipping.md").write_text(DOC_B + "\nNew fact.\n", encoding="utf-8")
    build_index([docs], tmp_path / "idx", embedder=minilm, chunk_chars=200, overlap_chars=40)
    assert "changed since training" in (changed_since(load_run(run.dir)) or "")
    report = evaluate(load_run(run.dir), max_examples=2)
    assert any("retrieval index" in w and "changed since training" in w for w in report.warnings)


def test_odd_inputs_do_not_break_the_index(tmp_path, minilm):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "empty.md").write_text("", encoding="utf-8")
    (odd / "only-script.html").write_text("<script>while(1){}</script><style>*{}</style>", encoding="utf-8")
    (odd / "bytes.txt").write_bytes(b"caf\xe9 \x00 latin-1 text. " + "Ünïcödé ok.".encode())
    (odd / "rows.jsonl").write_text('{"text": "a fine row."}\n{broken json\n\n["list", "row"]\n', encoding="utf-8")
    (odd / "ignored.bin").write_bytes(b"\x00\x01")
    (odd / "long.txt").write_text("x" * 5000, encoding="utf-8")  # one unbroken "sentence": cut hard
    stats = build_index([odd], tmp_path / "idx", embedder=minilm, chunk_chars=300, overlap_chars=50)
    retriever = Retriever.open(tmp_path / "idx")
    texts = [r["text"] for r in retriever.table.to_arrow().to_pylist()]
    assert stats.files == 5 and not any("while(1)" in t for t in texts) and all(len(t) <= 300 for t in texts)
    assert "{broken json" in texts and "a fine row." in texts
    assert stats.skipped == ["odd/bytes.txt: binary, not text (a NUL byte at offset 5)"]  # left out, and said so
    assert not any("caf" in t for t in texts)
    for query in ('<script>"AND OR (', "NOT *:* ~", "\x00", "Ünïcödé"):
        assert isinstance(retriever.search(query, k=2), list)
    with pytest.raises(DataError, match="no text"):
        build_index([odd / "empty.md"], tmp_path / "idx2", embedder=minilm)
    assert not (tmp_path / "idx2").exists()  # a failed first build leaves no folder behind
    with pytest.raises(DataError, match="unsupported"):
        build_index([odd / "ignored.bin"], tmp_path / "idx3", embedder=minilm)


def test_cli_build_query_eval(docs, tmp_path, minilm):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", "build", str(docs), "--out", str(out), "--chunk-chars", "200", "--overlap-chars", "40"])
    assert res.exit_code == 0, res.output
    assert "2 embedded" in res.output and "all-MiniLM-L6-v2" in res.output
    res = runner.invoke(app, ["index", "query", str(out), "Zorblax-9 form", "-k", "2"])
    assert res.exit_code == 0 and "docs/billing.md:5" in res.output, res.output
    gold = write_jsonl(
        tmp_path / "gold.jsonl",
        [
            {"question": "Which form must be attached to a refund?", "sources": ["billing.md:7"]},
            {"question": "Where do parcels leave from?", "sources": ["docs/shipping.md"]},
            {"question": "no gold"},
        ],
    )
    res = runner.invoke(app, ["index", "eval", str(out), str(gold), "-k", "1", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0 and "2 question(s) (1 skipped)" in " ".join(res.output.split()), res.output
    report = json.loads((tmp_path / "r.json").read_text())
    page = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in page and "recall@1" in page
    assert report["modes"]["hybrid"] == {"recall_at_k": 1.0, "mrr": 1.0, "hit_rate": 1.0}
    assert report["content_hash"] == content_hash(out)
    res = runner.invoke(app, ["index", "build", str(docs), "--out", str(docs)])  # a folder tunesmith did not make
    assert res.exit_code == 1 and "did not create" in " ".join(res.output.split())


def test_recipe_rag_template_is_checked_when_the_recipe_loads(index, tiny_recipe):
    from tunesmith.config import load_recipe
    from tunesmith.errors import RecipeError

    ok = load_recipe(tiny_recipe(rag={"index": str(index), "template": "{{ question }}\n{{ context }}", "k": 2}))
    assert ok.rag is not None and ok.rag.index == str(index) and ok.rag.k == 2
    for bad, why in (
        ("{context} {questoin}", "does not render"),
        ("Answer: {question}", "must place"),
        ("{{ context }", "does not render"),
    ):
        with pytest.raises(RecipeError, match=why):
            load_recipe(tiny_recipe(rag={"index": str(index), "template": bad}))
    with pytest.raises(RecipeError, match="rag.index"):
        load_recipe(tiny_recipe(rag={"index": "no-such-index"}))


def test_binary_latin1_and_too_deep_rows_are_left_out_and_named(tmp_path, minilm):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text(DOC_B, encoding="utf-8")
    (docs / "latin1.txt").write_bytes("Le café coûte trois euros.".encode("latin-1"))
    (docs / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (docs / "rows.jsonl").write_text('{"text": "A shallow row."}\n' + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["index", "build", str(docs), "--out", str(tmp_path / "idx")])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "Traceback" not in out, out
    assert re.search(r"left out\W+3 \(not UTF-8 text", out), out  # the count, in the build's table
    assert "docs/latin1.txt: not UTF-8 text (byte 0xe9 at offset 6)" in out
    assert "docs/image.md: binary, not text" in out and "docs/rows.jsonl:2: JSON nested deeper than 64 levels" in out
    texts = [r["text"] for r in Retriever.open(tmp_path / "idx").table.to_arrow().to_pylist()]
    assert "A shallow row." in texts and not any("caf" in t or "PNG" in t or "[[[" in t for t in texts)
    with pytest.raises(DataError, match=r"no text found in 1 document\(s\)\n  - latin1.txt: not UTF-8"):
        build_index([docs / "latin1.txt"], tmp_path / "idx2", embedder=minilm)


def test_eval_out_html_never_writes_the_page_over_the_report(index, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from helpers import plant_links, predictable_temp_names, untouched, victim
    from tunesmith.cli import app

    gold = write_jsonl(tmp_path / "gold.jsonl", [{"question": "Where do parcels leave from?", "sources": ["shipping.md"]}])
    shared = tmp_path / "shared"
    outside = victim(tmp_path)
    links = plant_links(shared, ["x.json", "x.html", ".tunesmith"], outside)
    predictable_temp_names(monkeypatch)
    runner = CliRunner()
    res = runner.invoke(app, ["index", "eval", str(index), str(gold), "--out", str(shared / "x.html")])
    assert res.exit_code == 0, res.output
    report = json.loads((shared / "x.json").read_text())  # the figures, not a page
    assert report["modes"]["hybrid"]["hit_rate"] == 1.0
    assert (shared / "x.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert untouched(outside, links)
    before = {p.name: p.read_bytes() for p in shared.iterdir() if not p.is_symlink()}
    for again in ("x.html", "x.json", "x"):  # the same two files, whichever name --out gives: refused, nothing written
        res = runner.invoke(app, ["index", "eval", str(index), str(gold), "--out", str(shared / again)])
        assert res.exit_code != 0 and "already exists" in " ".join(res.output.split()), res.output
    assert {p.name: p.read_bytes() for p in shared.iterdir() if not p.is_symlink()} == before
    as_json = tmp_path / "gold.json"  # --out naming the labelled file itself: refused as an input
    as_json.write_text(json.dumps([json.loads(gold.read_text())]))
    res = runner.invoke(app, ["index", "eval", str(index), str(as_json), "--out", str(as_json)])
    assert res.exit_code != 0 and "input" in res.output and json.loads(as_json.read_text())[0]["question"]


def _damage(index: Path, how: str) -> None:
    if how == "record-binary":
        (index / "tunesmith-index.json").write_bytes(b"\x89PNG\x00\xff")
    elif how == "record-fields":
        (index / "tunesmith-index.json").write_text('{"schema_version": 1}')
    elif how == "table-missing":
        shutil.rmtree(index / "chunks.lance")
    elif how == "data-truncated":
        for data in (index / "chunks.lance" / "data").iterdir():
            data.write_bytes(data.read_bytes()[:100])
    elif how == "versions-garbage":
        for manifest in (index / "chunks.lance" / "_versions").iterdir():
            manifest.write_text("garbage\n")


@pytest.mark.parametrize("how", ["record-binary", "record-fields", "table-missing", "data-truncated", "versions-garbage"])
def test_a_damaged_index_is_one_clear_error(index, tmp_path, how):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    Retriever._cache.clear()  # the fixture's index may be cached open from another test
    _damage(index, how)
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"question": "Where do parcels leave from?", "sources": ["shipping.md"]}])
    for args in (["query", str(index), "parcels"], ["eval", str(index), str(gold)]):
        res = CliRunner().invoke(app, ["index", *args], env={"COLUMNS": "300"})
        out = " ".join(res.output.split())
        assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), (args, out, res.exception)
        assert "Traceback" not in out and str(index) in out and "Rebuild" in out, (args, out)
    # A rebuild in place either repairs it (a missing table is simply written again) or refuses it, clearly.
    res = CliRunner().invoke(app, ["index", "build", str(tmp_path / "docs"), "--out", str(index)], env={"COLUMNS": "300"})
    out = " ".join(res.output.split())
    assert res.exception is None or isinstance(res.exception, SystemExit), (out, res.exception)
    if res.exit_code == 0:
        Retriever._cache.clear()
        assert Retriever.open(index).search("parcels", k=1)[0].source == "docs/shipping.md"
    else:
        assert res.exit_code == 1 and str(index) in out and "Rebuild" in out, out


@pytest.mark.parametrize(
    "args, option",
    [
        (["query", "{index}", "parcels", "-k", "0"], "-k"),
        (["query", "{index}", "parcels", "-k", "-5"], "-k"),
        (["eval", "{index}", "{gold}", "-k", "0"], "-k"),
        (["build", "{docs}", "--out", "{tmp}/new", "--chunk-chars", "0"], "--chunk-chars"),
        (["build", "{docs}", "--out", "{tmp}/new", "--overlap-chars", "-1"], "--overlap-chars"),
    ],
)
def test_numbers_out_of_range_are_refused(index, docs, tmp_path, args, option):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    gold = write_jsonl(tmp_path / "gold.jsonl", [{"question": "Where do parcels leave from?", "sources": ["shipping.md"]}])
    values = {"index": index, "gold": gold, "docs": docs, "tmp": tmp_path}
    res = CliRunner().invoke(app, ["index", *[a.format(**values) for a in args]], env={"COLUMNS": "300"})
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Invalid value for" in out and option in out, out
    assert not (tmp_path / "new").exists()
