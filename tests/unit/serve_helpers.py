"""A live uvicorn server on loopback for the serve tests (a real socket, the real openai client)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
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


def lora_adapter(base_dir: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter for the model at `base_dir`, saved as peft saves one (random non-zero weights: it changes answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def hand_run(root: Path, name: str, base_dir: Path, full: bool = False, rag_index: Path | None = None) -> Path:
    """A finished run folder as `train` leaves it (run.yaml, manifest.json, adapter/), without training: a random
    LoRA adapter on `base_dir`, or (full) a copy of the base as the fine-tuned model."""
    import yaml
    from transformers import AutoTokenizer

    from tunesmith import models
    from tunesmith.records import BaseModelRef, Figures, Manifest, write_manifest

    run_dir = root / name
    run_dir.mkdir(parents=True)
    data = run_dir / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    if full:
        shutil.copytree(base_dir, run_dir / "adapter")
    else:
        lora_adapter(base_dir, run_dir / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.save_pretrained(run_dir / "adapter")
    recipe: dict[str, Any] = {
        "name": name,
        "method": "sft",
        "model": {"base": str(base_dir)},
        "data": {"train": [str(data)]},
        "adapter": {"type": "full" if full else "lora"},
        "output_dir": str(run_dir),
    }
    if rag_index is not None:
        recipe["rag"] = {"index": str(rag_index)}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    manifest = Manifest(
        run=name,
        method="sft",
        adapter="full" if full else "lora",
        base_model=BaseModelRef(spec=str(base_dir), path=str(base_dir)),
        chat_template_sha256=models.chat_template_hash(tokenizer),
        data={str(data): models.sha256_file(data)},
        figures=Figures(global_step=1, train_loss=1.0),
    )
    write_manifest(run_dir / "manifest.json", manifest)
    return run_dir


DOC = """# Refunds

Customers may ask for a refund within 30 days. The Zorblax-9 form must be attached to every refund request.

# Shipping

Parcels leave the warehouse in Rotterdam every Tuesday.
"""


def docs_index(root: Path) -> Path:
    """A small retrieval index (one policy document, the default embedder) at root/idx."""
    from tunesmith.rag.embed import load_embedder
    from tunesmith.rag.index import build_index

    (root / "docs").mkdir(parents=True)
    (root / "docs" / "policy.md").write_text(DOC, encoding="utf-8")
    build_index([root / "docs"], root / "idx", embedder=load_embedder(None), chunk_chars=120, overlap_chars=20)
    return root / "idx"


def run_cli(args: list[str], as_reader: bool = False, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `tunesmith ARGS` in a subprocess (a server that starts when it should not is a timeout, not a hang).

    as_reader: without root's power to write files whose mode forbids it, so file modes bind as for any user.
    """
    cmd = [sys.executable, "-m", "tunesmith", *args]
    if as_reader and os.geteuid() == 0:
        import pytest

        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes do not bind root")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *cmd]
    env = {**os.environ, "COLUMNS": "200", "TUNESMITH_API_KEY": "k"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
