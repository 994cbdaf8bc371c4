"""--engine vllm: the same API over vLLM (base + LoRA adapters); skipped without CUDA or vllm."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_vllm_engine_serves_base_and_adapter(tmp_path, tiny_recipe):
    pytest.importorskip("vllm")
    import openai
    from serve_helpers import live_server

    from tunesmith.config import load_recipe
    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.security import KeyRing
    from tunesmith.serve.vllm_engine import load_vllm_engine
    from tunesmith.train import sft

    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 2, "learning_rate": 0.2})))
    app = create_app(lambda: load_vllm_engine(run.dir), ServeSettings(keys=KeyRing.build(["k"], [])))
    with live_server(app, timeout_s=600) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        names = {m.id for m in client.models.list().data}
        assert run.dir.name in names and len(names) == 2
        ask = [{"role": "user", "content": "Add 3 and 4."}]
        for name in names:
            res = client.chat.completions.create(model=name, messages=ask, max_tokens=8, temperature=0)
            assert res.usage.completion_tokens > 0
