"""Shared fixtures: a tiny random Llama built from a config + the committed tiny tokenizer. Nothing downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLI's consoles take their width when first imported: wide, so a long temporary path in a message stays on one
# line whatever the process (a test of 80-column output sets its own width).
os.environ.setdefault("COLUMNS", "200")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each worker (and every CLI it starts) computes on one thread, since two
    # workers with a thread pool each on two cores spin against each other (a step ran 20-40x slower).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")

from helpers import chat_rows, save_tiny_llama, write_jsonl  # noqa: E402  (after the thread settings torch reads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama saved as a normal HF folder, with the tiny ChatML tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden=32)


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    """Factory: write data + a recipe YAML for the tiny model; returns the recipe path."""
    import yaml

    def make(**sections) -> Path:
        write_jsonl(tmp_path / "train.jsonl", chat_rows(24, seed=1))
        write_jsonl(tmp_path / "eval.jsonl", chat_rows(6, seed=2))
        recipe = {
            "name": "tiny",
            "model": {"base": str(tiny_model_dir)},
            "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 128},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "training": {
                "max_steps": 4,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "logging_steps": 1,
                "save_steps": 2,
                "save_total_limit": 5,
            },
            "eval": {"max_new_tokens": 8, "batch_size": 4},
            "output_dir": "runs/tiny",
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                recipe.setdefault(key, {}).update(value)
            else:
                recipe[key] = value
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def smollm2_env(tmp_path_factory):
    """One imported SmolLM2 shared by the e2e modules that only use it (test_cli_smollm2 tests `models pull` itself)."""
    home = tmp_path_factory.mktemp("tunesmith-home")
    env = {**os.environ, "TUNESMITH_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "models", "pull", "smollm2-135m-instruct"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return env
