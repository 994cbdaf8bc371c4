"""The family matrix: for each chat family's tiny model, the whole loop with one template and one set of stop tokens.

audit → train (2 steps) → eval (3 held-out rows) → merge → serve (the official openai client) → GGUF (where llama.cpp's
converter reads the architecture's vocabulary; otherwise a refusal naming it), and the prompt each path sends is the
training render's prompt, token for token: eval, the ladder, chat, serve (batched and streamed) and the studio.
"""

from __future__ import annotations

import json

import openai
import pytest
from serve_helpers import live_server

from family_helpers import EXPANDS, GGUF_REFUSED, family_recipe, recorded_prompts
from helpers import FAMILY_FIXTURES, family_name

KEY = "sk-family"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """fixture name -> its finished (and evaluated) tiny run, trained once for the module."""
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run
    from tunesmith.train.methods import evaluate

    runs = {}

    def get(name):
        if name not in runs:
            recipe = family_recipe(tmp_path_factory.mktemp(name.replace(".", "")), name)
            runs[name] = train_run(load_recipe(recipe))
            evaluate(runs[name])
        return runs[name]

    return get


def _training_prefix(run, tokenizer):
    """The text training put before the first held-out row's answer (data.template.render_turns), and its ids."""
    from tunesmith.data.template import render_turns
    from tunesmith.train.methods import held_out_examples

    rendered = render_turns(tokenizer, held_out_examples(run)[0].messages, policy=run.recipe.data.reasoning)
    text = rendered.text[: rendered.split_at]
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", list(FAMILY_FIXTURES))
def test_family_matrix(name, trained, tmp_path):
    from tunesmith import families, models
    from tunesmith.config import load_recipe
    from tunesmith.data.audit import audit_recipe
    from tunesmith.errors import ModelError
    from tunesmith.export.gguf import export_gguf
    from tunesmith.export.merge import merge
    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.engine import load_engine
    from tunesmith.serve.security import KeyRing
    from tunesmith.train import methods

    run = trained(name)
    family = families.get(family_name(name))
    tok = models.load_tokenizer(str(run.adapter_dir))
    ends = family.end_of_turn_ids(tok)

    # audit: no blocking finding, and every kept row trains the family's end-of-turn token
    recipe = load_recipe(run.dir / "run.yaml")
    report = audit_recipe(recipe, methods.get(recipe.method), tok)
    assert not report.errors, report.by_code()
    stats = report.stats["tokens"]
    assert stats["eos_trained_rows"] == stats["eos_checked_rows"] == 14

    # train: the family, its stops and the thinking mode recorded; two-turn rows expanded where a render cannot train
    recorded = run.manifest.family
    assert recorded is not None and recorded.family == family.name and recorded.stop_token_ids[: len(ends)] == ends
    assert recorded.thinking is (True if family.thinking_switch else None)
    assert recorded.end_of_turn == tok.convert_ids_to_tokens(ends)  # the unknown family's: the tokenizer's EOS
    counts = run.manifest.tokens.train
    assert (counts.expanded_rows, counts.rows_from_expansion) == ((2, 4) if name in EXPANDS else (0, 0))
    assert counts.turns["turns_trained"] == 16 and not counts.turns.get("turns_not_trainable")

    # eval: the three held-out rows through base and tuned
    predictions = [json.loads(line) for line in (run.dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3

    # merge: the template and the family's stop tokens kept in the folder another runtime reads
    merged = merge(run, tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert set(ends) <= set(config["eos_token_id"]) and merged["lineage"]["family"] == family.name
    assert models.load_tokenizer(str(tmp_path / "merged")).chat_template == tok.chat_template

    # serve: the official client gets eval's tuned answer for a held-out prompt, streamed and not
    from tunesmith.data.template import prompt_messages
    from tunesmith.train.methods import held_out_examples

    ask = prompt_messages(held_out_examples(run)[0].messages)
    app = create_app(lambda: load_engine(run.dir), ServeSettings(keys=KeyRing.build([KEY], [])))
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        res = client.chat.completions.create(model=run.dir.name, messages=ask, max_tokens=8, temperature=0)
        assert res.choices[0].message.content == predictions[0]["tuned"]
        chunks = client.chat.completions.create(model=run.dir.name, messages=ask, max_tokens=8, temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed.strip() == predictions[0]["tuned"]

    # GGUF: exported with its template and stop tokens, verified; or refused, naming the architecture
    out = tmp_path / "model.gguf"
    if name in GGUF_REFUSED:
        with pytest.raises(ModelError, match=GGUF_REFUSED[name]):
            export_gguf(tmp_path / "merged", out, n_check=2, max_new_tokens=8)
        assert not out.exists()
        return
    lineage = export_gguf(tmp_path / "merged", out, n_check=2, max_new_tokens=8)
    assert lineage.check["template_carried"] and lineage.check["stops_carried"]
    assert set(ends) <= set(lineage.check["stop_tokens"].values())  # Llama 3: <|eot_id|> and <|eom_id|>
    assert lineage.check["verify"]["passed"] and lineage.check["verify"]["checks"]["gguf"] == "ok"


@pytest.mark.parametrize("name", list(FAMILY_FIXTURES))
def test_every_path_sends_the_training_prompt(name, trained):
    """eval, the ladder, chat, serve (batched and streamed) and the studio's chat render the first held-out prompt
    exactly as training put it before the answer, in the run's thinking mode."""
    import threading

    from tunesmith.chat import ChatSession
    from tunesmith.data.template import prompt_messages
    from tunesmith.eval import scoring
    from tunesmith.eval.ladder import load_answerers
    from tunesmith.loader import load_run_model
    from tunesmith.serve.batching import Params
    from tunesmith.serve.engine import load_engine
    from tunesmith.studio.chat import ModelCache, stream_reply
    from tunesmith.train.methods import held_out_examples

    run = trained(name)
    conv = prompt_messages(held_out_examples(run)[0].messages)
    loaded = load_run_model(run)
    text, want = _training_prefix(run, loaded.tokenizer)
    seen: dict[str, list[list[int]]] = {}

    with recorded_prompts(loaded.model, seen.setdefault("eval", [])):
        scoring.answer(loaded.model, loaded.tokenizer, [conv], 2, 1, thinking=loaded.thinking)
    who = load_answerers(run.recipe, {"tuned"})[0]["tuned"]
    with recorded_prompts(who.model, seen.setdefault("ladder", [])):
        scoring.answer(who.model, who.tokenizer, [conv], 2, 1, thinking=who.thinking)
    session = ChatSession.open(str(run.dir))
    with recorded_prompts(session.model, seen.setdefault("chat", [])):
        session.ask(conv[-1]["content"], max_new_tokens=2)
    engine = load_engine(run.dir)
    with recorded_prompts(engine.model, seen.setdefault("serve", [])):
        engine.generate_batch(engine.default_name, [conv], Params(max_tokens=2, temperature=0.0))
        list(engine.stream(engine.default_name, conv, Params(max_tokens=2, temperature=0.0), threading.Event(), 60))
    cache = ModelCache()
    studio = cache.get(run.dir)
    with recorded_prompts(studio.model, seen.setdefault("studio", [])):
        list(stream_reply(cache, run.dir, conv, max_new_tokens=2))
    assert engine.prompt(engine.default_name, conv) == text  # the bytes, as serve counts and sends them
    for path, prompts in seen.items():
        assert prompts and all(p == want for p in prompts), path
