"""Model families: detection from config + template (or vocabulary), stop tokens, the committed templates as a
fallback, tool calls rendered and parsed back per family, and the tiny models of every family loading, showing
in `models info` and training."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoConfig, AutoTokenizer

from helpers import FAMILY_FIXTURES, build_family_dirs, family_name, family_tokenizer, trained_runs
from tunesmith import families
from tunesmith.data.template import expand_turns, tokenize_example
from tunesmith.errors import DataError, ModelError
from tunesmith.families.tools import parse_tool_calls

FIXTURES = list(FAMILY_FIXTURES)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return build_family_dirs(tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("name", FIXTURES)
def test_detect_from_config_and_template(dirs, name):
    tok = AutoTokenizer.from_pretrained(dirs[name])
    assert families.detect(AutoConfig.from_pretrained(dirs[name]), tok).name == family_name(name)
    assert families.for_tokenizer(tok).name == family_name(name)  # the template alone is enough


def test_model_type_vetoes_a_family_whose_markers_match():
    tok = family_tokenizer("qwen2.5")
    assert families.detect({"model_type": "qwen2"}, tok).name == "qwen2.5"
    assert families.detect({"model_type": "llama"}, tok).name == "chatml"  # a ChatML Llama is not Qwen
    tok.chat_template = "{% for m in messages %}[INST] <<SYS>>{{ m.content }}[/INST]{% endfor %}"
    assert families.detect({"model_type": "llama"}, tok) is families.UNKNOWN  # Llama 2's [INST] is not Mistral


@pytest.mark.parametrize("name", FIXTURES)
def test_stop_tokens_cover_the_generation_config_and_start_with_end_of_turn(dirs, name):
    tok = AutoTokenizer.from_pretrained(dirs[name])
    family = families.get(family_name(name))
    stops = family.stop_token_ids(tok)
    config_eos = json.loads((dirs[name] / "generation_config.json").read_text())["eos_token_id"]
    assert set(config_eos) <= set(stops)
    assert stops[: len(family.end_of_turn_ids(tok))] == family.end_of_turn_ids(tok)
    assert tok.eos_token_id in stops


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3", "mistral", "phi3", "phi4"])
def test_a_base_folder_without_template_gets_its_family_template(dirs, tmp_path, name):
    import shutil

    from tunesmith import models

    base = tmp_path / name
    shutil.copytree(dirs[name], base)
    (base / "chat_template.jinja").unlink()
    tok = models.load_tokenizer(str(base))
    family = families.get(family_name(name))
    assert tok.chat_template == family.template_text()
    assert models.model_info(str(base))["family"] == family.name


def test_a_folder_of_an_unknown_family_without_template_is_still_refused(dirs, tmp_path):
    import shutil

    from tunesmith import models

    base = tmp_path / "unknown"
    shutil.copytree(dirs["unknown"], base)
    (base / "chat_template.jinja").unlink()
    for file in base.glob("tokenizer*.json"):  # the tiny vocabulary carries ChatML tokens: rename them away
        file.write_text(file.read_text().replace("<|im_", "<|xx_"))
    with pytest.raises(ModelError, match="no chat template"):
        models.load_tokenizer(str(base))


def test_models_info_shows_the_family(dirs):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["models", "info", str(dirs["gemma3"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "gemma" in result.output and "first_user" in result.output and "<end_of_turn>" in result.output


def test_loader_knows_the_family_and_its_stop_tokens(dirs):
    from tunesmith.loader import load_target

    loaded = load_target(str(dirs["llama3"]))
    tok = loaded.tokenizer
    assert loaded.family.name == "llama3"
    assert loaded.stop_token_ids()[:2] == [tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|eom_id|>")]


# ---- tools: rendered by the family template, the call trained, the list and results not, parsed back ------------

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
CALL = {"id": "call00001", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
TOOL_CONV = [
    {"role": "user", "content": "Add 1 and 2."},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call00001", "content": "3"},
    {"role": "assistant", "content": "It is 3."},
]
CALL_TEXT = {
    "llama3": ('{"name": "add", "parameters": {"a": 1, "b": 2}}', "<|eot_id|>"),
    "qwen2.5": ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "<|im_end|>"),
    "qwen3": ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "<|im_end|>"),
    "chatml": ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "<|im_end|>"),
    "gemma3": ('{"name": "add", "arguments": {"a": 1, "b": 2}}', "<end_of_turn>"),
    "mistral": ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "call00001"}]', "</s>"),
    "phi3": ('<|tool_call|>[{"name": "add", "arguments": {"a": 1, "b": 2}}]<|/tool_call|>', "<|end|>"),
}


@pytest.mark.parametrize("name", list(CALL_TEXT))
def test_tool_calls_are_trained_in_the_family_format_and_parse_back(name):
    tok = family_tokenizer(name)
    call_row = expand_turns(TOOL_CONV)[0]
    t = tokenize_example(tok, call_row, tools=TOOLS)
    body, end = CALL_TEXT[name]
    assert trained_runs(tok, t.input_ids, t.labels) == [body + end]
    parsed = parse_tool_calls(body, families.get(family_name(name)).tools)
    assert parsed.error is None and [c["function"]["name"] for c in parsed.calls] == ["add"]
    assert json.loads(parsed.calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}
    # The whole exchange: the tool list and the tool result are context, never trained.
    full = tokenize_example(tok, TOOL_CONV, tools=TOOLS)
    runs = trained_runs(tok, full.input_ids, full.labels)
    assert runs[-1].lstrip().startswith("It is 3.") and not any('"properties"' in r or r.strip() == "3" for r in runs)


@pytest.mark.parametrize("name", ["phi4", "gemma2", "unknown"])
def test_families_or_templates_without_a_tool_format_refuse_tools(name):
    with pytest.raises(DataError, match="tool"):
        tokenize_example(family_tokenizer(name), TOOL_CONV, tools=TOOLS)


@pytest.mark.parametrize(
    ("style", "text", "names"),
    [
        ("hermes", 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>', ["add"]),
        ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {}}', ["a", "b"]),
        ("mistral", '[TOOL_CALLS] [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]', ["a", "b"]),
        ("phi4_mini", '<|tool_call|>[{"name": "a", "arguments": {"x": "y"}}]<|/tool_call|>', ["a"]),
        ("json", 'Calling.\n{"name": "a", "arguments": {"x": 1}}', ["a"]),
        ("json", '{"sum": 3}', []),  # a JSON answer is not a call
    ],
)
def test_parse_tool_calls_per_style(style, text, names):
    parsed = parse_tool_calls(text, style)
    assert parsed.error is None and [c["function"]["name"] for c in parsed.calls] == names


def test_a_broken_call_comes_back_as_content_with_an_error():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1\n</tool_call>'
    parsed = parse_tool_calls(text, "hermes")
    assert parsed.calls == [] and parsed.content == text and "unparsable" in (parsed.error or "")


# ---- a real training step on one family's tiny model --------------------------------------------------------------


def test_sft_trains_a_tiny_qwen3_on_rows_with_traces(dirs, tiny_recipe, tmp_path):
    from helpers import write_jsonl
    from tunesmith.config import load_recipe
    from tunesmith.run import read_metrics
    from tunesmith.train import sft

    path = tiny_recipe(model={"base": str(dirs["qwen3"])}, training={"max_steps": 2, "save_steps": 2})
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{a}+1?"},
                {"role": "assistant", "content": str(a + 1), "thinking": f"{a} plus one."},
            ]
        }
        for a in range(28)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows[:24])
    write_jsonl(tmp_path / "eval.jsonl", rows[24:])
    run = sft.run(load_recipe(path))
    losses = [r["loss"] for r in read_metrics(run.dir) if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    train = run.manifest.tokens.train
    assert train is not None and train.kept == 24
    assert train.turns["traces_trained"] == 24 and train.thinking_rows == {"on": 24}  # `thinking` read as the trace
    saved = AutoTokenizer.from_pretrained(run.dir / "adapter")
    assert families.for_tokenizer(saved).name == "qwen3"
    family = run.manifest.family
    assert family is not None and family.family == "qwen3" and family.thinking is True
    assert family.stop_token_ids[0] == saved.convert_tokens_to_ids("<|im_end|>")
