"""Helpers shared by the test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TOKENIZER = FIXTURES / "tiny-tokenizer"


def save_tiny_llama(out: Path, hidden: int = 32) -> Path:
    """A 2-layer random Llama (intermediate = 2 x hidden, seed 0) saved with the tiny ChatML tokenizer as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "system", "content": "Answer with JSON."},
                    {"role": "user", "content": f"Add {a} and {b}."},
                    {"role": "assistant", "content": json.dumps({"sum": a + b})},
                ],
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def predictable_temp_names(monkeypatch) -> None:
    """Make tunesmith's random temp names predictable: the first name each writer draws is `planted`, then fresh ones.

    With `plant_links`, this puts a symlink exactly where a writer would first try to create its temp file.
    """
    import itertools
    import secrets
    import tempfile

    hexes = itertools.chain(["planted"], (f"fresh{i}" for i in itertools.count()))
    monkeypatch.setattr(secrets, "token_hex", lambda n=8: next(hexes))
    names = itertools.chain(["planted"], (f"fresh{i}" for i in itertools.count()))
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)


def plant_links(folder: Path, names: list[str], outside: Path) -> list[Path]:
    """Symlinks to `outside` at every temp name a writer of folder/NAME could pick: the fixed `.NAME.tmp` older
    versions used and the first random ones (see predictable_temp_names). Returns the links."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name in names:
        for temp in (f".{name}.tmp", f".{name}.planted.tmp", f".{name}.plantedtmp"):
            (folder / temp).symlink_to(outside)
            links.append(folder / temp)
    return links


def victim(root: Path) -> Path:
    """A file outside the folders under test that planted links point at; `untouched` checks it and the links."""
    path = root / "elsewhere" / "victim.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not yours\n")
    return path


def untouched(outside: Path, links: list[Path]) -> bool:
    return outside.read_text() == "not yours\n" and all(link.is_symlink() and link.resolve() == outside for link in links)
