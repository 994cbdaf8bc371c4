"""Retrieval in serve: `"rag": true` puts passages into the prompt with the one prompt builder and returns the sources."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import docs_index, free_port, live_server

from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.engine import load_engine
from tunesmith.serve.security import KeyRing

ASK = [{"role": "user", "content": "Which form goes with a refund request?"}]


@pytest.fixture(scope="module")
def rag_server(tmp_path_factory, tiny_model_dir):
    index = docs_index(tmp_path_factory.mktemp("serve-rag"))
    port = free_port()
    settings = ServeSettings(keys=KeyRing.build(["k"], []), index=str(index))
    app = create_app(lambda: load_engine(tiny_model_dir), settings)
    with live_server(app, port=port) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0), app.state.tunesmith


def test_rag_returns_sources_and_builds_the_prompt_like_training(rag_server):
    from tunesmith.rag.prompt import augment
    from tunesmith.rag.retrieve import Retriever

    client, state = rag_server
    model = state.engine.base_name
    plain = client.chat.completions.create(model=model, messages=ASK, max_tokens=4, temperature=0)
    assert "sources" not in (plain.model_extra or {})
    res = client.chat.completions.create(model=model, messages=ASK, max_tokens=4, temperature=0, extra_body={"rag": True})
    sources = res.model_extra["sources"]
    assert sources and sources[0]["source"].endswith("policy.md") and "Zorblax-9" in sources[0]["text"]
    expected, passages = augment(ASK, Retriever.open(state.settings.index), 4)
    assert [p.chunk_id for p in passages] == [s["chunk_id"] for s in sources]
    assert res.usage.prompt_tokens == state.engine.prompt_tokens(expected) > plain.usage.prompt_tokens
    chunks = list(
        client.chat.completions.create(
            model=model, messages=ASK, max_tokens=4, temperature=0, stream=True, extra_body={"rag": True}
        )
    )
    assert chunks[0].model_extra["sources"] == sources
    metrics = state.metrics.render()[0].decode()
    assert f'tunesmith_retrieval_hits_total{{model="{model}"}} {2.0 * len(sources)}' in metrics


def test_rag_without_an_index_is_a_400(tiny_model_dir):
    app = create_app(lambda: load_engine(tiny_model_dir), ServeSettings(keys=KeyRing.build(["k"], [])))
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        model = app.state.tunesmith.engine.base_name
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=model, messages=ASK, max_tokens=2, extra_body={"rag": True})
        assert err.value.param == "rag"
