"""A live uvicorn server on loopback for the serve tests (a real socket, the real openai client)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app: Any, port: int | None = None, wait_ready: bool = True, timeout_s: float = 120.0):
    """Run `app` with uvicorn in a thread; yields the base URL once /health answers (ready, unless told not to wait)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                res = httpx.get(url + "/health", timeout=5)
                if not wait_ready or res.status_code == 200 or res.json().get("problem"):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
