"""Retrieval: build a LanceDB index of documents (index.py), search it (retrieve.py), put passages into prompts (prompt.py)."""
