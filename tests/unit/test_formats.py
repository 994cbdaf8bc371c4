import gzip
import json

import pytest

from tunesmith.data.formats import RowError, load_examples, read_records, to_messages
from tunesmith.errors import DataError


def test_shapes_normalise_to_messages():
    assert to_messages({"instruction": "Sum", "input": "1 2", "output": "3"}) == [
        {"role": "user", "content": "Sum\n\n1 2"},
        {"role": "assistant", "content": "3"},
    ]
    assert to_messages({"prompt": "p", "completion": "c"})[1] == {"role": "assistant", "content": "c"}
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert [m["role"] for m in to_messages(sharegpt)] == ["user", "assistant"]


@pytest.mark.parametrize(
    "row, code",
    [
        ([1, 2], "data_type"),
        ({"messages": []}, "missing_messages_list"),
        ({"messages": [{"role": "user"}]}, "message_missing_key"),
        ({"messages": [{"role": "user", "content": "x", "foo": 1}]}, "message_unrecognized_key"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unrecognized_role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content_not_string"),
        ({"messages": [{"role": "user", "content": "x"}]}, "missing_assistant_message"),
        ({"foo": "bar"}, "unknown_shape"),
    ],
)
def test_row_errors_have_codes(row, code):
    with pytest.raises(RowError) as exc:
        to_messages(row)
    assert exc.value.code == code


def test_bad_line_reports_file_and_line(tmp_path):
    good = json.dumps({"prompt": "a", "completion": "b"})
    path = tmp_path / "d.jsonl"
    path.write_text(f"{good}\n\n{{not json\n{good}\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError) as exc:
        load_examples([str(path)])
    text = str(exc.value)
    assert "2 bad row(s)" in text and f"{path}:3" in text and f"{path}:5" in text and "missing_assistant_message" in text


def test_bom_crlf_gzip_csv_json_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"prompt": "a", "completion": "b"}
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\r\n").encode() * 2)
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(row) + "\n")
    (tmp_path / "c.csv").write_text("prompt,completion\na,b\n")
    (tmp_path / "l.json").write_text(json.dumps([row, row, row]))
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "p.parquet")
    counts = {
        name: len(load_examples([str(tmp_path / name)])) for name in ("bom.jsonl", "z.jsonl.gz", "c.csv", "l.json", "p.parquet")
    }
    assert counts == {"bom.jsonl": 2, "z.jsonl.gz": 1, "c.csv": 1, "l.json": 3, "p.parquet": 1}
    assert [r.line for r in read_records(tmp_path / "bom.jsonl")] == [1, 2]


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(read_records(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_records(tmp_path / "x.txt"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="Parquet"):
        list(read_records(tmp_path / "bad.parquet"))


DEEP = "[" * 5000 + "]" * 5000  # past the parser's own recursion limit
SHALLOW_BUT_DEEP = json.dumps({"messages": [{"role": "user", "content": "q"}], "meta": json.loads("[" * 200 + "]" * 200)})


@pytest.mark.parametrize("deep", [DEEP, SHALLOW_BUT_DEEP])
def test_a_deeply_nested_row_is_one_bad_row_with_its_line(tmp_path, deep):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(f"{good}\n{deep}\n{good}\n")
    records = list(read_records(jsonl))
    assert [(r.line, r.error) for r in records] == [(1, None), (2, "JSON nested deeper than 64 levels"), (3, None)]
    as_json = tmp_path / "d.json"
    as_json.write_text(f"[{good}, {deep}]")
    # A .json file is one document: past the parser's limit the file is one bad record, else only the deep row is.
    errors = [None, "JSON nested deeper than 64 levels"] if deep == SHALLOW_BUT_DEEP else ["JSON nested deeper than 64 levels"]
    assert [r.error for r in read_records(as_json)] == errors
    csv_file = tmp_path / "d.csv"
    import csv

    with csv_file.open("w", newline="") as fh:
        csv.writer(fh).writerows([["messages"], [json.dumps(json.loads(good)["messages"])], [deep]])
    assert [r.error for r in read_records(csv_file)] == [None, "column `messages`: JSON nested deeper than 64 levels"]
    with pytest.raises(DataError, match=r"d.jsonl:2: \[invalid_json\] JSON nested deeper"):
        load_examples(str(jsonl))


def test_data_check_counts_a_deep_row_with_its_line(tmp_path):
    from typer.testing import CliRunner

    from helpers import chat_rows
    from tunesmith.cli import app

    rows = [json.dumps(r) for r in chat_rows(12, seed=1)]
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join([*rows[:5], DEEP, *rows[5:]]) + "\n")
    res = CliRunner().invoke(app, ["data", "check", str(src), "--no-tokens", "--json"])
    assert res.exit_code == 1 and not isinstance(res.exception, RecursionError), res.output
    found = [f for f in json.loads(res.output)["findings"] if f["severity"] == "error"]
    assert [(f["code"], f["line"], f["message"]) for f in found] == [("invalid_json", 6, "JSON nested deeper than 64 levels")]
