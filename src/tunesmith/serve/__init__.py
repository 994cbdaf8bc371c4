"""Serving: an OpenAI-compatible API over a base model and its LoRA adapters, with a request log."""
