"""`tunesmith import openai`: OpenAI fine-tuning jobs (SFT, DPO, RFT with a multi grader; fixtures in OpenAI's
documented shapes under tests/fixtures/openai) become tunesmith projects that train on the tiny model; OpenAI's
format rules are reported with line numbers; every setting is mapped or listed as not carried over; bad input
is one clear error that leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from test_nothing_lost import cli  # the real CLI: exit code and output, asserting no traceback

from helpers import FIXTURES, write_jsonl
from tunesmith.config import load_recipe
from tunesmith.migrate import openai_data
from tunesmith.migrate.openai import import_openai
from tunesmith.migrate.openai_graders import TUNESMITH_ITEM, item_fields, translate
from tunesmith.migrate.openai_hparams import auto_epochs, lora_lr, split_batch
from tunesmith.migrate.report import WIDTH
from tunesmith.outputs import MARKER, OutputError

OA = FIXTURES / "openai"


def report_of(project: Path) -> dict:
    return json.loads((project / "import-report.json").read_text())


def rules(report: dict) -> dict[str, dict]:
    return {(Path(h["file"]).name, h["code"]): h for h in report["openai_rules"]}


def unmapped(report: dict) -> dict[str, dict]:
    return {u["field"]: u for u in report["unmapped"]}


def train_two_steps(project: Path, *extra: str):
    from tunesmith.train.entry import run as train_run

    return train_run(load_recipe(project / "recipe.yaml", ["training.max_steps=2", "training.logging_steps=1", *extra]))


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path, monkeypatch):
    """Staging folders go under this test's tmp_path, so a test can see that none is left behind."""
    staging = tmp_path / "system-tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    return staging


# --- the rules -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "epochs"), [(2, 25), (10, 10), (24, 4), (34, 3), (100, 3), (8_333, 3), (9_000, 2), (100_000, 1)])
def test_auto_epochs_follow_openais_documented_rule(n, epochs):
    assert auto_epochs(n) == epochs


def test_batch_is_kept_as_the_global_batch_and_the_lr_multiplier_scales_the_lora_rate():
    assert split_batch(8) == (4, 2) and split_batch(6) == (3, 2) and split_batch(7) == (1, 7) and split_batch(2) == (2, 1)
    assert lora_lr(2) == pytest.approx(4e-4) and lora_lr(100) == 1e-3 and lora_lr(0.001) == 1e-5


# --- the three jobs, imported and trained ---------------------------------------------------------------------------


def test_sft_job_with_file_ids_imports_through_the_cli_and_trains(tmp_path, tiny_model_dir):
    out = tmp_path / "support"
    code, text = cli("import", "openai", OA / "sft-job.json", "--files", OA / "files", "--model", tiny_model_dir, "--out", out)
    assert code == 0, text
    assert "imported supervised job ftjob-Sft9Kd2mQ7aB" in text and "not carried over (2)" in text
    report = report_of(out)
    summary = (out / "import-report.txt").read_text().splitlines()
    assert all(len(line) <= WIDTH for line in summary)
    # the files: ids resolved (the validation file was saved without .jsonl), copies keep the line numbers
    assert [f["file_id"] for f in report["files"]] == ["file-Sft7rain2Q4xT9", "file-Sft7va1id8Pz3"]
    source = (OA / "files" / "file-Sft7rain2Q4xT9.jsonl").read_text().splitlines()
    copy = (out / "data" / "train.jsonl").read_text().splitlines()
    assert len(copy) == len(source) and copy[2] == source[2]  # an unconverted row stays as it was
    developer = rules(report)[("file-Sft7rain2Q4xT9.jsonl", "openai_developer_role")]
    assert developer["lines"] == [1, 6, 11, 16, 21] and developer["severity"] == "converted"
    assert json.loads(copy[0])["messages"][0] == {"role": "system", "content": "Answer with JSON."}
    parts = rules(report)[("file-Sft7rain2Q4xT9.jsonl", "openai_content_parts")]
    assert parts["lines"] == [2, 8, 14, 20] and json.loads(copy[1])["messages"][1]["content"].startswith("Add ")
    # the mapping, in the recipe and in its comments
    recipe = load_recipe(out / "recipe.yaml")
    assert (recipe.method, recipe.name, Path(recipe.output_dir).name) == ("sft", "support-bot", "support-bot")
    t = recipe.training
    assert (t.epochs, t.batch_size, t.grad_accum, t.learning_rate, t.seed) == (4, 4, 2, pytest.approx(4e-4), 7)
    assert recipe.data.eval and recipe.data.eval.endswith("validation.jsonl")
    text_yaml = (out / "recipe.yaml").read_text()
    assert "# from OpenAI: method.supervised.hyperparameters.n_epochs = auto -> 4 (auto: OpenAI's rule for n=24" in text_yaml
    assert "# from OpenAI: method.supervised.hyperparameters.learning_rate_multiplier = 2 -> 0.0004" in text_yaml
    # what could not be mapped: listed with why and what tunesmith does instead; the hosted run's record kept
    missing = unmapped(report)
    assert set(missing) == {"integrations", "metadata"}
    assert "report_to" in missing["integrations"]["instead"] and missing["metadata"]["value"] == {"team": "support"}
    assert report["recorded"]["status"] == "succeeded" and report["recorded"]["id"] == "ftjob-Sft9Kd2mQ7aB"
    run = train_two_steps(out)
    assert run.manifest.method == "sft" and run.manifest.figures.global_step == 2


def test_dpo_job_with_a_relative_path_imports_and_trains(tmp_path, tiny_model_dir):
    out = tmp_path / "dpo"
    imported = import_openai(out, str(tiny_model_dir), job_file=OA / "dpo-job.json")
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.method == "dpo" and recipe.dpo.beta == 0.2 and recipe.training.epochs == 2 and recipe.training.seed == 3
    assert recipe.name == "sums-dpo" and imported.report.files[0].source == str(OA / "data" / "dpo-train.jsonl")
    assert "# from OpenAI: method.dpo.hyperparameters.beta = 0.2 -> 0.2 (kept)" in (out / "recipe.yaml").read_text()
    run = train_two_steps(out)
    assert run.manifest.method == "dpo" and run.manifest.figures.global_step == 2


def test_rft_job_with_a_multi_grader_becomes_grpo_with_the_grader_as_reward(tmp_path, tiny_model_dir):
    out = tmp_path / "rft"
    imported = import_openai(out, str(tiny_model_dir), job_file=OA / "rft-job.json", files_dir=OA / "files")
    report = report_of(out)
    # the row without the field the grader reads is left out, listed by line; the copy keeps every line number
    missing = rules(report)[("file-Rft3train5Kq1.jsonl", "openai_rft_missing_field")]
    assert missing["lines"] == [6] and missing["severity"] == "error" and report["files"][0]["left_out"] == 1
    copy = (out / "data" / "train.jsonl").read_text().split("\n")
    assert copy[5] == "" and json.loads(copy[0])["prompt"][0]["role"] == "system"
    assert {k: v for k, v in json.loads(copy[0]).items() if k != "prompt"} == {"answer": "86", "max_chars": 8}  # as given
    # the grader: its definition as OpenAI wrote it (item fields read as they are), the reward and the eval metric
    graders = json.loads((out / "graders.json").read_text())
    multi = graders[0]
    assert multi["graders"]["exact"]["reference"] == "{{ item.answer }}"
    assert multi["calculate_output"] == "0.4 * exact + 0.4 * close + 0.2 * short**1"
    assert (
        multi["graders"]["short"]["source"]
        == json.loads((OA / "rft-job.json").read_text())["method"]["reinforcement"]["grader"]["graders"]["short"]["source"]
    )
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.method == "grpo" and [(r.type, r.grader) for r in recipe.grpo.rewards] == [("grader", "sum_grader")]
    assert [g["name"] for g in recipe.eval.graders] == ["sum_grader"]  # type: ignore[union-attr]
    assert imported.report.graders[0].used_as == ["eval", "reward"]
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "data",
        "graders.json",
        "import-report.json",
        "import-report.txt",
        "recipe.yaml",
    ]
    # reinforcement-only settings: listed, never dropped
    listed = unmapped(report)
    for key in ("reasoning_effort", "compute_multiplier", "eval_interval"):
        assert f"method.reinforcement.hyperparameters.{key}" in listed
    assert "method.reinforcement.grader.graders.short.image_tag" in listed
    assert report["recorded"]["method.reinforcement.hyperparameters.eval_samples"] == "auto"
    run = train_two_steps(out, "grpo.max_completion_length=8")
    assert run.manifest.method == "grpo" and run.manifest.figures.global_step == 2
    from tunesmith.run import read_metrics

    assert any("rewards/sum_grader/mean" in row for row in read_metrics(run.dir))


def test_the_reward_is_the_eval_grader(tmp_path, tiny_model_dir):
    """The GRPO reward and `tunesmith eval` score an output with the same definition and the same item: the row's
    own fields, as the training dataset and the held-out rows carry them."""
    from tunesmith.eval.graders import grader_items, load_graders, scores
    from tunesmith.train import rewards
    from tunesmith.train.methods import eval_examples

    out = tmp_path / "rft"
    import_openai(out, str(tiny_model_dir), job_file=OA / "rft-job.json", files_dir=OA / "files")
    recipe = load_recipe(out / "recipe.yaml")
    [reward] = rewards.for_recipe(recipe)
    held_out = eval_examples(recipe)[0]
    assert held_out.extra == {"answer": held_out.extra["answer"], "max_chars": 8}
    outputs = [held_out.extra["answer"], "1000", "eighty-six, I think"]
    prompt = held_out.messages[:-1]
    columns = rewards.columns([""] * 3, [held_out.extra] * 3)
    got = reward([prompt] * 3, [[{"role": "assistant", "content": o}] for o in outputs], **columns)
    grader = load_graders(out / "graders.json")[0]
    items = grader_items(["0", "1", "2"], [prompt[-1]["content"]] * 3, [""] * 3, [held_out.extra] * 3)
    expected = scores(grader, outputs, items)
    assert got == pytest.approx(expected)
    assert got[0] == pytest.approx(1.0) and got[2] < got[1] < got[0]


def test_a_completion_the_grader_cannot_render_scores_zero(tmp_path, caplog):
    from tunesmith.eval.graders import load_graders
    from tunesmith.train import rewards

    grader = {"type": "string_check", "name": "sum", "input": "{{ sample.output_json.sum }}", "reference": "5"}
    reward = rewards.make_grader(load_graders([grader])[0], None)
    assert reward([[]] * 2, ['{"sum": 5}', "not json"]) == [1.0, 0.0]
    assert "could not score a completion" in caplog.text


# --- OpenAI's format rules, with line numbers ------------------------------------------------------------------------


def _chat(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": str(i)}], **extra}


def test_openai_rules_are_reported_with_line_numbers_and_bad_rows_counted(tmp_path, tiny_model_dir):
    rows: list = [_chat(i) for i in range(12)]
    rows[1]["messages"][0]["weight"] = 1  # weight on a user message
    rows[2]["messages"][0]["content"] = [{"type": "image_url", "image_url": {"url": "x.png"}}]  # an image
    rows[3] = {"prompt": "Say 3.", "completion": "3"}  # not OpenAI's chat format
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    rows[4]["messages"][1:1] = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c9", "content": "4"},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    path.write_text(path.read_text() + "{not json\n")  # line 13
    out = tmp_path / "p"
    imported = import_openai(out, str(tiny_model_dir), training_file=path)
    hits = rules(report_of(out))
    assert hits[("train.jsonl", "openai_weight_not_assistant")]["lines"] == [2]
    assert hits[("train.jsonl", "openai_image_content")]["lines"] == [3]  # left out (tunesmith trains text)
    assert hits[("train.jsonl", "openai_not_chat_format")]["lines"] == [4]
    assert hits[("train.jsonl", "openai_tool_arguments_not_string")]["lines"] == [5]
    assert hits[("train.jsonl", "openai_tool_result_unmatched")]["lines"] == [5]
    copy = (out / "data" / "train.jsonl").read_text().split("\n")
    assert copy[2] == "" and copy[12] == "{not json"  # left out as a blank line; a bad line kept for the audit
    audit = report_of(out)["audit"]
    assert audit["invalid_json"]["count"] == 1 and audit["invalid_json"]["first"][0].startswith(f"{path}:13")
    assert imported.report.audit_errors >= 1 and imported.report.files[0].left_out == 1
    assert any("blocking error" in line for line in imported.summary)


def test_dpo_and_rft_rules(tmp_path, tiny_model_dir):
    pref = lambda i, out: {  # noqa: E731
        "input": {"messages": [{"role": "user", "content": f"Say {i}."}], "tools": [{"type": "function"}] * (i == 2)},
        "preferred_output": out,
        "non_preferred_output": [{"role": "assistant", "content": "no"}],
    }
    one = [{"role": "assistant", "content": "ok"}]
    rows = [pref(i, one) for i in range(12)]
    rows[5] = pref(5, [*one, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok 2"}])
    import_openai(tmp_path / "d", str(tiny_model_dir), training_file=write_jsonl(tmp_path / "pref.jsonl", rows))
    hits = rules(report_of(tmp_path / "d"))
    assert report_of(tmp_path / "d")["method"] == "dpo"  # from the rows' shape
    assert hits[("pref.jsonl", "openai_dpo_not_one_turn")]["lines"] == [6]
    assert hits[("pref.jsonl", "openai_dpo_tools")]["lines"] == [3]

    grader = tmp_path / "grader.json"
    grader.write_text(
        json.dumps({"type": "string_check", "name": "g", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"})
    )
    rft = [{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(12)]
    rft[2]["messages"].append({"role": "assistant", "content": "2"})
    rft[3]["messages"] = [{"role": "system", "content": "hi"}]
    path = write_jsonl(tmp_path / "rft.jsonl", rft)
    import_openai(tmp_path / "r", str(tiny_model_dir), training_file=path, method="reinforcement", grader_file=grader)
    hits = rules(report_of(tmp_path / "r"))
    assert hits[("rft.jsonl", "openai_rft_last_not_user")]["lines"] == [3]
    assert hits[("rft.jsonl", "openai_rft_no_user")]["lines"] == [4]
    copy = (tmp_path / "r" / "data" / "train.jsonl").read_text().split("\n")
    assert json.loads(copy[2]) == {"prompt": [{"role": "user", "content": "Say 2."}], "answer": "2"}
    assert json.loads((tmp_path / "r" / "graders.json").read_text())[0]["reference"] == "{{ item.answer }}"


def test_rows_over_the_hosted_models_example_limit_are_listed(tmp_path, tiny_model_dir, monkeypatch):
    rows = [_chat(i) for i in range(12)]
    rows[7]["messages"][0]["content"] = "Say seven, and then say it again, and again, " * 4
    job = {"model": "gpt-4o-mini-2024-07-18", "training_file": "train.jsonl"}
    write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "job.json").write_text(json.dumps(job))
    monkeypatch.setitem(openai_data.EXAMPLE_LIMITS, "gpt-4o-mini-2024-07-18", 40)  # the real limit is 65,536 tokens
    import_openai(tmp_path / "p", str(tiny_model_dir), job_file=tmp_path / "job.json")
    assert rules(report_of(tmp_path / "p"))[("train.jsonl", "openai_over_example_limit")]["lines"] == [8]


# --- graders ------------------------------------------------------------------------------------------------------------


def test_graders_that_cannot_be_mapped_are_listed_and_the_rest_translated():
    label = json.loads((OA / "graders.json").read_text())["graders"][3]
    score = {
        "type": "score_model",
        "name": "judge",
        "model": "o4-mini-2025-04-16",
        "input": [
            {"role": "developer", "content": "Grade 0-1."},
            {"role": "user", "content": [{"type": "input_text", "text": "{{ sample.output_text }} vs {{ item.reference }}"}]},
        ],
        "sampling_params": {"temperature": 0},
    }
    tools = {
        "type": "string_check",
        "name": "tool",
        "input": "{{ sample.output_tools[0].function.name }}",
        "reference": "add",
        "operation": "eq",
    }
    floor = {"type": "multi", "name": "m", "graders": {"a": tools | {"input": "x"}}, "calculate_output": "floor(a)"}
    neq = {"type": "string_check", "name": "n", "input": "{{ sample.output_text }}", "reference": "no", "operation": "neq"}
    pairs = [(f"g{i}", g) for i, g in enumerate([label, score, tools, floor, neq, {"type": "custom_thing", "name": "c"}])]
    fields = set(TUNESMITH_ITEM)
    without = translate(pairs, fields, judge=None)
    assert [g["name"] for g in without.graders] == ["m", "n"] and without.graders[1]["operation"] == "ne"
    assert without.graders[0]["calculate_output"] == "floor(a)"  # floor and ceil are multi's functions too
    why = {u.field: u.why for u in without.unmapped}
    assert "label_model needs a judge" in why["g0"] and "judge" in why["g1"] and "output_tools" in why["g2"]
    assert "custom_thing" in why["g5"]
    judged = translate(pairs[:2], fields, judge="http://127.0.0.1:9/v1")
    label_t, g = judged.graders
    assert label_t["model"] == g["model"] == "http://127.0.0.1:9/v1" and label_t["passing_labels"] == ["polite"]
    assert g["input"] == score["input"]  # developer role and text parts as OpenAI wrote them: the judge reads both
    assert "g1.sampling_params" in {u.field for u in judged.unmapped}


def test_item_fields_are_found_and_checked_against_the_rows():
    grader = json.loads((OA / "rft-job.json").read_text())["method"]["reinforcement"]["grader"]
    assert item_fields(grader) == ["answer", "max_chars"]
    one = {
        "type": "text_similarity",
        "name": "t",
        "input": "{{ sample.output_json.x }}",
        "reference": "{{ item.ans.x }} {{ item['ans'] }}",
    }
    t = translate([("g", one)], {*TUNESMITH_ITEM, "ans"}, judge=None).graders[0]
    assert t["reference"] == one["reference"]  # read from the row as it is: nothing rewritten
    py = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return float(item['ans'] == 3)\n"}
    assert "item.ans, which not every row has" in translate([("g", py)], set(TUNESMITH_ITEM), judge=None).unmapped[0].why
    from tunesmith.eval.graders import grader_items, load_graders, scores

    src = translate([("g", py)], {*TUNESMITH_ITEM, "ans"}, judge=None).graders[0]
    assert scores(load_graders([src])[0], ["x"], grader_items(["0"], [""], [""], [{"ans": 3}])) == [1.0]


@pytest.mark.parametrize("judge", [None, "http://127.0.0.1:9/v1"])
def test_an_rft_model_grader_is_the_reward_with_a_judge_and_falls_back_without(tmp_path, tiny_model_dir, judge):
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(12)]
    score = {
        "type": "score_model",
        "name": "judge",
        "model": "o4-mini-2025-04-16",
        "input": [{"role": "user", "content": "Is {{ sample.output_text }} equal to {{ item.answer }}? 1 or 0."}],
    }
    job = {"training_file": "t.jsonl", "method": {"type": "reinforcement", "reinforcement": {"grader": score}}}
    write_jsonl(tmp_path / "t.jsonl", rows)
    (tmp_path / "job.json").write_text(json.dumps(job))
    imported = import_openai(tmp_path / "p", str(tiny_model_dir), job_file=tmp_path / "job.json", judge=judge)
    recipe = load_recipe(tmp_path / "p" / "recipe.yaml")
    listed = unmapped(report_of(tmp_path / "p"))
    if judge:  # the grader, through that judge, is the reward and the eval metric
        assert [(r.type, r.grader) for r in recipe.grpo.rewards] == [("grader", "judge")]
        assert recipe.eval.graders[0]["model"] == judge  # type: ignore[index]
        assert imported.report.graders[0].used_as == ["eval", "reward"]
        assert "method.reinforcement.grader (as the reward)" not in listed
    else:  # exact match on the field it reads, the closest working reward
        assert [(r.type, r.field) for r in recipe.grpo.rewards] == [("exact_match", "answer")]
        assert "closest working reward" in listed["method.reinforcement.grader (as the reward)"]["instead"]
        assert imported.report.graders[0].used_as == []


def test_unknown_fields_anywhere_in_the_job_are_reported(tmp_path, tiny_model_dir):
    rows = [_chat(i) for i in range(12)]
    write_jsonl(tmp_path / "t.jsonl", rows)
    job = {
        "training_file": "t.jsonl",
        "flavour": "extra",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"warmup": 5, "n_epochs": 1}, "mode": "x"}},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    imported = import_openai(tmp_path / "p", str(tiny_model_dir), job_file=tmp_path / "job.json")
    listed = unmapped(report_of(tmp_path / "p"))
    assert {"flavour", "method.supervised.mode", "method.supervised.hyperparameters.warmup"} <= set(listed)
    assert all(u["why"] and u["instead"] for u in listed.values())
    assert any("flavour" in line for line in imported.summary)


# --- bad input: one clear error, nothing written --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_id", "is an OpenAI file id that was not found"),
        ("files_not_a_folder", "not a folder"),
        ("not_jsonl", "not a JSONL file of examples"),
        ("binary", "not a JSONL text file"),
        ("unknown_method_flag", "unknown method `rlhf`"),
        ("unknown_method_job", "unknown method `rlhf`"),
        ("job_not_json", "the job file is not JSON"),
        ("two_graders_for_rft", "takes one grader"),
        ("bad_model", "model path not found"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_is_written(case, message, tmp_path, tiny_model_dir, _own_tmp):
    train = write_jsonl(tmp_path / "t.jsonl", [_chat(i) for i in range(12)])
    job = tmp_path / "job.json"
    args: list = ["import", "openai"]
    if case == "missing_id":
        job.write_text(json.dumps({"training_file": "file-Missing123"}))
        args += [job, "--files", OA / "files"]
    elif case == "files_not_a_folder":
        job.write_text(json.dumps({"training_file": "file-Missing123"}))
        args += [job, "--files", train]
    elif case in ("not_jsonl", "binary"):
        bad = tmp_path / "file-Csv1"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" if case == "binary" else b"a,b\n1,2\n")
        job.write_text(json.dumps({"training_file": "file-Csv1"}))
        args += [job]
    elif case == "unknown_method_flag":
        args += ["--training-file", train, "--method", "rlhf"]
    elif case == "unknown_method_job":
        job.write_text(json.dumps({"training_file": "t.jsonl", "method": {"type": "rlhf"}}))
        args += [job]
    elif case == "job_not_json":
        job.write_text('{"training_file": "t.jsonl",')
        args += [job]
    elif case == "two_graders_for_rft":
        args += ["--training-file", train, "--method", "reinforcement", "--grader", OA / "graders.json"]
    else:
        args += ["--training-file", train]
    out = tmp_path / "out"
    model = "./no-such-model" if case == "bad_model" else tiny_model_dir
    code, text = cli(*args, "--model", model, "--out", out)
    assert code == 1 and "error:" in text and message in text, text
    assert not out.exists() and not any(_own_tmp.iterdir())


def test_the_output_folder_holds_only_what_an_import_made(tmp_path, tiny_model_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("my notes")
    args = ["import", "openai", OA / "dpo-job.json", "--model", tiny_model_dir, "--out"]
    code, text = cli(*args, mine)
    assert code == OutputError.exit_code and "by you, not by tunesmith" in text
    assert sorted(p.name for p in mine.iterdir()) == ["notes.md"]
    out = tmp_path / "project"
    assert cli(*args, out)[0] == 0
    before = hashlib.sha256((out / "recipe.yaml").read_bytes()).hexdigest()
    code, text = cli(*args, out)
    assert code == OutputError.exit_code and "--overwrite" in text
    assert cli(*args, out, "--overwrite")[0] == 0
    assert hashlib.sha256((out / "recipe.yaml").read_bytes()).hexdigest() == before
    assert json.loads((out / MARKER).read_text())["command"] == "import openai"
    shutil.rmtree(out)


def test_an_import_again_with_overwrite_replaces_its_files_in_place_and_keeps_an_edited_one(tmp_path, tiny_model_dir):
    """--overwrite puts each file where the first import put it (data/train.jsonl, not data/data/train.jsonl), and
    refuses, leaving everything as it was, when the user edited one of the imported data files."""
    out = tmp_path / "support"
    args = ["import", "openai", OA / "sft-job.json", "--files", OA / "files", "--model", tiny_model_dir, "--out", out]
    assert cli(*args)[0] == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MARKER}
    code, text = cli(*args, "--overwrite")
    assert code == 0, text
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MARKER}
    assert sorted(again) == sorted(first) and again == first
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train.jsonl", "validation.jsonl"]
    (out / "data" / "train.jsonl").write_text((out / "data" / "train.jsonl").read_text() + "\n")  # the user's edit
    edited = (out / "data" / "train.jsonl").read_bytes()
    code, text = cli(*args, "--overwrite")
    assert code == OutputError.exit_code and "train.jsonl" in text, text
    assert (out / "data" / "train.jsonl").read_bytes() == edited


def test_a_row_of_no_shape_is_reported_as_not_trained_not_as_read(tmp_path, tiny_model_dir):
    """A malformed line and a row with unknown keys: the audit names each line; neither is said to be read and
    trained under OpenAI's not-chat-format rule."""
    rows = [_chat(i) for i in range(12)]
    train = write_jsonl(tmp_path / "t.jsonl", [*rows, {"prompt": "p", "completion": "c"}])
    with open(train, "a", encoding="utf-8") as fh:
        fh.write('{"messages": [\n{"msgs": []}\n')
    out = tmp_path / "out"
    imported = import_openai(out, str(tiny_model_dir), training_file=train)
    report = report_of(out)
    assert rules(report)[("t.jsonl", "openai_not_chat_format")]["lines"] == [13]
    assert report["audit"]["invalid_json"]["first"][0].startswith(f"{train}:14: invalid JSON")
    assert report["audit"]["unknown_shape"]["first"][0].startswith(f"{train}:15: row has keys")
    assert imported.report.audit_errors >= 2
