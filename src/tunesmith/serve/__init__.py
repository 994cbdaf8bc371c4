"""Serving: an OpenAI-compatible API over a base model and its LoRA adapters, with a request log."""

from tunesmith.serve import log_postgres, log_sqlite  # noqa: F401  (each adds its backend to store.BACKENDS)
