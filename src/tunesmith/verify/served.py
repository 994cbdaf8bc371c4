"""verify's served path: the run behind the real server (uvicorn on a loopback port, in this process), asked the
held-out prompts over HTTP as a client asks them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.eval.generate import stop_token_ids
from tunesmith.serve import engine as engine_module
from tunesmith.serve.security import KeyRing, generate_key
from tunesmith.verify.compare import Divergence, compare_prompts, compare_stops, compare_texts

START_TIMEOUT_S = 600.0


@contextmanager
def running(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port in a background thread; yields its URL once /health says
    ready (ModelError with the server's own reason when it cannot start)."""
    import httpx
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="tunesmith-verify-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                res = httpx.get(url + "/health", timeout=5)
                if res.status_code == 200:
                    break
                if res.json().get("problem"):
                    raise ModelError(f"the server did not start: {res.json()['problem']}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ModelError(f"the server did not become ready within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def served_path(run: Any, ref: Any, max_new_tokens: int) -> list[Divergence]:
    """The engine's prompt bytes and stop tokens, then the answers (content and reasoning_content) the endpoint gives
    for each held-out prompt, greedy, against the adapter's."""
    import httpx

    from tunesmith.serve.app import ServeSettings, create_app

    engine = engine_module.load_engine(run.dir)
    name = engine.default_name
    found = compare_prompts("served", ref, [engine.prompt(name, c) for c in ref.convs], engine.tokenizer)
    found += compare_stops("served", ref.end_of_turn, stop_token_ids(engine.model, engine.tokenizer), ref.tokenizer)
    key = generate_key()
    app = create_app(lambda: engine, ServeSettings(keys=KeyRing.build([key], []), batching=False))
    with running(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        for k, (conv, want) in enumerate(zip(ref.convs, ref.completions), start=1):
            body = {"model": name, "messages": conv, "temperature": 0, "max_tokens": max_new_tokens}
            res = client.post("/v1/chat/completions", json=body)
            if res.status_code != 200:
                found.append(Divergence("served", "answer", k, None, "HTTP 200", f"HTTP {res.status_code}: {res.text[:200]}"))
                continue
            message = res.json()["choices"][0]["message"]
            found += compare_texts("served", "answer", k, want.answer, message.get("content"), ref.tokenizer)
            found += compare_texts("served", "reasoning", k, want.reasoning, message.get("reasoning_content"), ref.tokenizer)
    return found
