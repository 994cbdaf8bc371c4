"""Property-style audit tests: every check code comes from a file built to trigger it, at the right line; clean files give none."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from tunesmith.data.audit import CODES, audit
from tunesmith.data.checks import Finding

TOKENIZER_DIR = Path(__file__).parents[1] / "fixtures" / "tiny-tokenizer"
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "tiger",
    "violet",
    "ocean",
    "amber",
    "cedar",
    "falcon",
    "harbor",
    "lemon",
    "meadow",
    "nickel",
    "orbit",
    "pepper",
    "quartz",
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def clean_row(i: int) -> dict:
    """A valid, distinct row: no duplicates or near-duplicates among clean_row(0..n)."""
    a, b = i % 97 + 1, (i * 7) % 89 + 2
    return {
        "id": f"r{i}",
        "messages": [
            {"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": f"Question {i}: what is {a} plus {b} for {WORDS[i % len(WORDS)]}?"},
            {"role": "assistant", "content": json.dumps({"sum": a + b, "id": i})},
        ],
    }


def chat(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer, **extra}]}


TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    },
}


def call(name: str = "lookup_order", args: str = '{"order_id": "A1"}', id: str = "c1") -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def calling(*calls: dict, content: str | None = None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def result(call_id: str, content: str = "shipped") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def tool_row(*messages: dict, tools: list | None = None) -> dict:
    """A row offering the lookup_order tool: a question, then `messages`."""
    return {"messages": [{"role": "user", "content": "Where is order A1?"}, *messages], "tools": tools or [TOOL]}


LONG = " ".join(f"{WORDS[i % len(WORDS)]}{i}" for i in range(60))
NEAR = LONG.replace("apple0", "banana0")

# code -> (bad row or raw line, audit options). None for the dataset-level cases built below.
ROW_TRIGGERS: dict[str, tuple[object, dict]] = {
    "invalid_json": ("{oops this is not json", {}),
    "data_type": ([1, 2, 3], {}),
    "unknown_shape": ({"foo": "bar"}, {}),
    "missing_messages_list": ({"messages": []}, {}),
    "message_not_object": ({"messages": ["hello"]}, {}),
    "message_missing_key": ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, {}),
    "message_unrecognized_key": (chat("q", "a", mood="happy"), {}),
    "unrecognized_role": ({"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}, {}),
    "missing_content": ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}, {}),
    "invalid_weight": (chat("q", "a", weight=2), {}),
    "invalid_name": (chat("q", "a", name=7), {}),
    "invalid_tool_call": (chat("q", "a", tool_calls="call it"), {}),
    "example_missing_assistant_message": ({"messages": [{"role": "user", "content": "only a question"}]}, {}),
    "missing_prompt": ({"chosen": "good", "rejected": "bad"}, {}),
    "missing_chosen": ({"prompt": "p", "chosen": [], "rejected": "bad"}, {}),
    "missing_rejected": ({"prompt": "p", "chosen": "good", "rejected": 5}, {}),
    "system_not_first": (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {},
    ),
    "consecutive_user_turns": (
        {
            "messages": [
                {"role": "user", "content": "q1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {},
    ),
    "empty_assistant_content": (chat("q", "   \n"), {}),
    "ends_with_user_turn": ({"messages": [*chat("q", "a")["messages"], {"role": "user", "content": "and then?"}]}, {}),
    "identical_chosen_rejected": ({"prompt": "pick one", "chosen": "same answer", "rejected": "same answer"}, {}),
    "over_max_length": (chat("long one", LONG), {"max_length": 96}),
    "truncated_no_trained_tokens": (chat(LONG, "short"), {"max_length": 96, "overlong": "truncate"}),
    "eos_not_trained": (chat("q", LONG), {"max_length": 96, "overlong": "truncate"}),
    "all_labels_masked": (chat("q", "a", weight=0), {}),
    "refusal_ratio": (chat("Tell me a secret", "I'm sorry, I can't help with that."), {}),
    # The tiny tokenizer's ChatML template renders no `tools`: the row cannot be trained as written.
    "template_refuses_row": ({**chat("q", "a"), "tools": [{"type": "function", "function": {"name": "f"}}]}, {}),
    # Tool calls against the row's tools (data.tool_checks); each is a blocking error, so no template is asked.
    "invalid_tools": ({**chat("q", "a"), "tools": [{"type": "function", "function": {"description": "no name"}}]}, {}),
    "tool_not_declared": (tool_row(calling(call("refund_order"))), {}),
    "tool_arguments_not_json": (tool_row(calling(call(args="{order_id: A1"))), {}),
    "tool_arguments_schema": (tool_row(calling(call(args='{"order": 5}'))), {}),
    "tool_result_unmatched": (tool_row(calling(call()), result("c1"), result("c9"), answer("Shipped.")), {}),
    "tool_call_unanswered": (tool_row(calling(call()), answer("Shipped.")), {}),
}
DATASET_CODES = {
    "file_unreadable",
    "no_eos_token",
    "no_trainable_rows",
    "too_few_examples",
    "few_examples",
    "exact_duplicate",
    "near_duplicate",
    "eval_overlap",
    "eval_near_overlap",
    "label_imbalance",
}
# What is trained, per chat family (tests/unit/test_family_audit.py triggers each with a family's tiny model), and
# a warning about a row the family template renders (tests/unit/test_tools_data.py, the ChatML family's tiny model).
FAMILY_CODES = {"empty_trace_trained", "tool_result_trained", "whitespace_only_trained", "packed_rows_attend"}
FAMILY_CODES |= {"tool_content_and_calls"}
# Under a method that trains on answers (test_a_prompt_without_an_answer_is_dropped_..., below).
METHOD_CODES = {"no_answer"}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def test_every_code_has_a_trigger():
    assert set(ROW_TRIGGERS) | DATASET_CODES | FAMILY_CODES | METHOD_CODES == set(CODES)


def test_clean_file_gives_no_findings(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", [clean_row(i) for i in range(60)])
    evaluation = write(tmp_path / "eval.jsonl", [clean_row(i) for i in range(60, 70)])
    report = audit([str(train)], [str(evaluation)], tok, max_length=256, label_field="id")
    assert report.findings == []
    assert report.stats["rows"] == {"train": 60, "train_usable": 60, "eval": 10, "eval_usable": 10}
    assert report.stats["tokens"]["assistant_tokens"]["min"] > 0


@pytest.mark.parametrize("code", sorted(ROW_TRIGGERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_row_trigger_reports_its_line(tmp_path, tok, code, seed):
    bad, options = ROW_TRIGGERS[code]
    rows: list = [clean_row(i) for i in range(60)]
    position = random.Random(f"{code}-{seed}").randrange(len(rows) + 1)
    # refusal_ratio is a share: 5% of answers needed, so the row goes in four times (distinct questions).
    copies = 4 if code == "refusal_ratio" else 1
    for k in range(copies):
        item = copy.deepcopy(bad)
        if code == "refusal_ratio":
            item["messages"][0]["content"] += f" number {k}"
        rows.insert(position + k, item)
    path = write(tmp_path / "train.jsonl", rows)
    report = audit(
        [str(path)], tokenizer=tok, max_length=options.get("max_length", 256), overlong=options.get("overlong", "drop")
    )
    hits = [f for f in report.findings if f.code == code]
    assert hits, f"{code} not reported; got {codes(report.findings)}"
    if code != "refusal_ratio":
        assert [f.line for f in hits] == [position + 1] and hits[0].file == str(path)
    # The rest of the file is still audited.
    assert report.stats["rows"]["train"] == 60 + copies
    others = codes(report.findings) - {code}
    assert others <= {"over_max_length", "eos_not_trained", "refusal_ratio"}, others


def test_message_index_points_at_the_message(tmp_path):
    rows = [clean_row(i) for i in range(20)]
    rows[5] = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "bad": 1},
        ]
    }
    report = audit([str(write(tmp_path / "t.jsonl", rows))])
    (hit,) = [f for f in report.findings if f.code == "message_unrecognized_key"]
    assert (hit.line, hit.message_index, hit.severity) == (6, 3, "error")


@pytest.fixture
def clean60(tmp_path):
    return [clean_row(i) for i in range(60)]


def test_dataset_level_codes(tmp_path, tok, clean60):
    def run(rows, eval_rows=None, tokenizer=None, **kw):
        train = write(tmp_path / "train.jsonl", rows)
        evals = [str(write(tmp_path / "eval.jsonl", eval_rows))] if eval_rows else []
        return codes(audit([str(train)], evals, tokenizer, **kw).findings)

    assert "too_few_examples" in run(clean60[:5])
    assert "few_examples" in run(clean60[:20]) and "too_few_examples" not in run(clean60[:20])
    assert "exact_duplicate" in run(clean60 + [clean60[3]])
    assert "near_duplicate" in run(clean60 + [chat("write", LONG), chat("write", NEAR)])
    assert "eval_overlap" in run(clean60, [clean60[7], clean_row(99)])
    assert "eval_near_overlap" in run(clean60 + [chat("write", LONG)], [chat("write", NEAR)])
    labelled = [dict(r, label="yes" if i < 57 else "no") for i, r in enumerate(clean60)]
    assert "label_imbalance" in run(labelled, label_field="label")
    assert "label_imbalance" not in run([dict(r, label=str(i % 3)) for i, r in enumerate(clean60)], label_field="label")
    assert "no_trainable_rows" in run(clean60, tokenizer=tok, max_length=16)
    no_eos = copy.deepcopy(tok)
    no_eos.eos_token = None
    assert "no_eos_token" in run(clean60, tokenizer=no_eos)
    report = audit([str(tmp_path / "missing.jsonl"), str(write(tmp_path / "ok.jsonl", clean60))])
    assert codes(report.findings) == {"file_unreadable"} and report.unreadable


def test_policy_error_makes_over_length_blocking(tmp_path, tok, clean60):
    path = write(tmp_path / "t.jsonl", clean60 + [chat("q", LONG)])
    drop = audit([str(path)], tokenizer=tok, max_length=96)
    error = audit([str(path)], tokenizer=tok, max_length=96, overlong="error")
    assert not drop.errors and drop.stats["tokens"]["dropped_overlong"] == 1 and drop.stats["tokens"]["tokens_lost"] > 96
    assert [f.code for f in error.errors] == ["over_max_length"]
    trunc = audit([str(path)], tokenizer=tok, max_length=96, overlong="truncate")
    assert trunc.stats["tokens"]["dropped_overlong"] == 0 and trunc.stats["tokens"]["tokens_lost"] > 0


def test_one_bad_line_in_ten_thousand(tmp_path, tok):
    rows: list = [clean_row(i) for i in range(10_000)]
    rows[6_789] = '{"messages": [ broken'
    report = audit([str(write(tmp_path / "big.jsonl", rows))], tokenizer=tok, max_length=256)
    assert [(f.code, f.line) for f in report.findings] == [("invalid_json", 6_790)]
    assert report.stats["rows"] == {"train": 10_000, "train_usable": 9_999}
    assert report.stats["tokens"]["total_tokens"]["n"] == 9_999


def test_pad_equal_eos_still_trains_eos(tmp_path, tok, clean60):
    assert tok.pad_token_id == tok.eos_token_id  # the fixture tokenizer pads with EOS
    report = audit([str(write(tmp_path / "t.jsonl", clean60))], tokenizer=tok)
    assert report.stats["tokens"]["pad_is_eos"] is True
    assert "eos_not_trained" not in codes(report.findings)


def test_shapes_all_audit_clean(tmp_path, tok):
    rows = []
    for i in range(60):
        q, a = f"question {i} about {WORDS[i % len(WORDS)]}", f"answer {i * 3} with {WORDS[(i + 5) % len(WORDS)]}"
        rows.append(
            [
                {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
                {"instruction": q, "input": "", "output": a},
                {"prompt": q, "completion": a},
                {"prompt": q, "chosen": a, "rejected": a + " not"},
                {
                    "input": {"messages": [{"role": "user", "content": q}]},
                    "preferred_output": [{"role": "assistant", "content": a}],
                    "non_preferred_output": [{"role": "assistant", "content": "no " + a}],
                },
                {"prompt": [{"role": "user", "content": q}]},
            ][i % 6]
        )
    report = audit([str(write(tmp_path / "mixed.jsonl", rows))], tokenizer=tok)
    assert report.findings == []
    assert report.stats["shapes"] == {
        s: 10 for s in ("sharegpt", "alpaca", "prompt_completion", "preference", "openai_dpo", "prompt_only")
    }


def test_docs_table_lists_every_code():
    doc = (Path(__file__).parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    missing = [code for code in CODES if f"`{code}`" not in doc]
    assert not missing, missing


def test_a_prompt_without_an_answer_is_dropped_and_counted_under_a_method_that_trains_answers(tmp_path, tiny_model_dir):
    """SFT and DPO train on answers: a prompt-only training row trains nothing, so the check says which row and drops
    it as training does (before, it counted as usable, with no finding). GRPO samples its answers: the same rows are
    its data. Held-out prompts without answers are scored without a reference, so the eval file is not flagged."""
    from typer.testing import CliRunner

    from helpers import chat_rows
    from tunesmith.cli import app

    rows = [json.dumps(r) for r in chat_rows(12, seed=1)]
    prompt = json.dumps({"prompt": [{"role": "user", "content": "What is the capital of France?"}]})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([*rows[:3], prompt, *rows[3:7], prompt.replace("France", "Peru"), *rows[7:]]) + "\n")
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text("\n".join([prompt, *rows[:3]]) + "\n")

    def check(method: str) -> dict:
        args = ["data", "check", str(train), "--eval", str(held_out), "--model", str(tiny_model_dir), "--json"]
        res = CliRunner().invoke(app, [*args, "--method", method])
        assert res.exception is None or isinstance(res.exception, SystemExit), res.output
        return json.loads(res.output)

    for method in ("sft", "dpo"):
        report = check(method)
        found = [(f["code"], f["file"], f["line"]) for f in report["findings"] if f["code"] == "no_answer"]
        assert found == [("no_answer", str(train), 4), ("no_answer", str(train), 9)], method
        assert report["stats"]["tokens"]["dropped_no_trained_tokens"] == 2
    grpo = check("grpo")
    assert not [f for f in grpo["findings"] if f["code"] == "no_answer"]
    assert grpo["stats"]["tokens"]["dropped_no_trained_tokens"] == 0
