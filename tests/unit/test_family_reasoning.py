"""Reasoning traces and stop tokens after training: eval scores the answer after the trace and reports its length and
the traces never closed; serve returns the trace as reasoning_content (the official openai client, streamed and
not); a stream is split as the whole text is; every model stops on its family's end of turn; the run records the
thinking mode it serves with. What the tiny Qwen 3 writes is chosen by the test (family_helpers.scripted)."""

from __future__ import annotations

import json
import random

import openai
import pytest
from serve_helpers import live_server

from family_helpers import TRACE, family_recipe, scripted
from helpers import save_tiny_family
from tunesmith.data.reasoning import TraceStream, split_output

KEY = "sk-reasoning"


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory):
    """A 2-step tiny Qwen 3 run on rows whose answers carry a trace (thinking on)."""
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run

    # eval's budget leaves room for a trace before the answer
    return train_run(load_recipe(family_recipe(tmp_path_factory.mktemp("qwen3"), "qwen3", max_new_tokens=48)))


TEXTS = [
    "4",
    "  4 and more",
    "<think>\nadd\n</think>\n\n4",
    "<think>\n\n</think>\n\n4",
    "<think>\nadd and then",
    "<thinking is a word",
    "<think>a</thi nk> b </think>\n\nc\n",
    "<",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("opened", [False, True])
def test_a_stream_splits_as_the_whole_text(text, opened):
    want = split_output(text, opened_in_prompt=opened)
    rng = random.Random(text)
    for _ in range(25):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        stream = TraceStream(opened)
        out = [p for piece in pieces for p in stream.feed(piece)] + stream.finish()
        reasoning = "".join(p for kind, p in out if kind == "reasoning")
        answer = "".join(p for kind, p in out if kind == "content")
        assert (reasoning if stream.traced else None, answer, stream.closed) == (want.reasoning, want.answer, want.closed)


def test_gemma_stops_on_end_of_turn_when_its_generation_config_lacks_it(tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.eval.generate import generate_detailed, stop_token_ids
    from tunesmith.loader import load_target

    folder = save_tiny_family(tmp_path / "gemma3", "gemma3")
    config = json.loads((folder / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    config["eos_token_id"] = [tok.convert_tokens_to_ids("<eos>")]  # as some Gemma folders ship it
    (folder / "generation_config.json").write_text(json.dumps(config))
    loaded = load_target(str(folder))
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end in stop_token_ids(loaded.model, loaded.tokenizer)
    scripted(loaded.model, tok, "Paris<end_of_turn>and then more words")
    done = generate_detailed(loaded.model, loaded.tokenizer, [[{"role": "user", "content": "Capital?"}]], 20)[0]
    assert done.token_ids[-1] == end and done.text == "Paris" and done.finish_reason == "stop"


def test_the_run_records_the_thinking_mode_it_serves_with(qwen3_run):
    from tunesmith.models import load_tokenizer
    from tunesmith.records import TokenCounts, Tokens
    from tunesmith.train.finish import family_record

    family = qwen3_run.manifest.family
    assert family is not None and family.family == "qwen3" and family.thinking is True
    assert family.reasoning_policy == "train" and family.stop[:1] == ["<|im_end|>"]
    tok = load_tokenizer(str(qwen3_run.adapter_dir))

    def mode(rows):
        return family_record(tok, {"model_type": "qwen3"}, "train", Tokens(train=TokenCounts(thinking_rows=rows))).thinking

    assert (mode({"off": 3}), mode({"on": 1, "off": 2}), mode({})) == (False, True, None)
    assert family_record(tok, {"model_type": "llama"}, "train", Tokens()).family == "chatml"  # no switch: None
    counts = qwen3_run.manifest.tokens.train
    # 12 answers with a trace, 2 first answers (their trace stripped as history) learned in their own rows, and the
    # 2 second answers without one: trained with thinking off, the empty block in the prompt
    assert counts.turns["traces_trained"] == 14 and counts.thinking_rows == {"off": 2, "on": 14}


def test_models_info_and_train_summary_show_the_family(qwen3_run):
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.train.entry import summary

    result = CliRunner().invoke(app, ["models", "info", str(qwen3_run.dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "qwen3" in result.output and "thinking" in result.output and "<|im_end|>" in result.output
    line = summary(qwen3_run).splitlines()[2]
    assert line.startswith("family qwen3 (Qwen 3) · stops <|im_end|>, <|endoftext|> · thinking on")
    assert "2 rows expanded into 4" in line


def test_eval_scores_the_answer_after_the_trace_and_reports_traces(qwen3_run, monkeypatch):
    from tunesmith.eval import compare
    from tunesmith.models import load_tokenizer
    from tunesmith.train import methods
    from tunesmith.train.methods import held_out_examples

    first = held_out_examples(qwen3_run)[0].messages[-1]["content"]
    wrote = {}

    def loaded_writing(text):
        def load(run):
            loaded = original(run)
            wrote["ids"] = scripted(loaded.model, loaded.tokenizer, text, "<|im_end|>")
            return loaded

        return load

    original = compare.load_run_model
    monkeypatch.setattr(compare, "load_run_model", loaded_writing(f"<think>\n{TRACE}\n</think>\n\n{first}"))
    report = methods.evaluate(qwen3_run)
    tuned = report.summary["tuned"]
    assert tuned["exact_match"] == pytest.approx(1 / 3)  # the answer after the trace equals the first reference
    tok = load_tokenizer(str(qwen3_run.adapter_dir))
    assert tuned["trace_tokens"] == len(tok(TRACE, add_special_tokens=False)["input_ids"]) and tuned["unclosed_traces"] == 0
    rows = [json.loads(x) for x in (qwen3_run.dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["tuned"] == first and rows[0]["tuned_reasoning"] == TRACE

    monkeypatch.setattr(compare, "load_run_model", loaded_writing("<think>\nstill adding the numbers one by one"))
    report = methods.evaluate(qwen3_run, max_examples=2)
    assert report.summary["tuned"]["unclosed_traces"] == 1.0 and report.summary["tuned"]["exact_match"] == 0.0


def test_serve_returns_the_trace_as_reasoning_content(qwen3_run):
    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.engine import load_engine
    from tunesmith.serve.security import KeyRing

    engine = load_engine(qwen3_run.dir)
    scripted(engine.model, engine.tokenizer, f'<think>\n{TRACE}\n</think>\n\n{{"sum": 5}}', "<|im_end|>")
    ask = [{"role": "user", "content": "Add 2 and 3."}]
    app = create_app(lambda: engine, ServeSettings(keys=KeyRing.build([KEY], [])))
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        res = client.chat.completions.create(model=engine.default_name, messages=ask, max_tokens=40, temperature=0)
        message = res.choices[0].message
        assert message.content == '{"sum": 5}' and message.model_extra["reasoning_content"] == TRACE
        assert res.choices[0].finish_reason == "stop"
        chunks = list(
            client.chat.completions.create(model=engine.default_name, messages=ask, max_tokens=40, temperature=0, stream=True)
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == TRACE
        assert "".join(d.content or "" for d in deltas).strip() == '{"sum": 5}'
        # no delta carries both: the trace never leaks into content
        assert not any(d.content and (d.model_extra or {}).get("reasoning_content") for d in deltas)
        # a completion without a trace has no reasoning_content
        scripted(engine.model, engine.tokenizer, '{"sum": 5}', "<|im_end|>")
        plain = client.chat.completions.create(model=engine.default_name, messages=ask, max_tokens=40, temperature=0)
        assert plain.choices[0].message.content == '{"sum": 5}'
        assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})
