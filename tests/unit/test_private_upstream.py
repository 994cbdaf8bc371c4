"""Private transformers attributes tunesmith touches live in train/_private.py; this fails the day an upgrade moves one."""

import ast
from pathlib import Path

import pytest

import tunesmith
from tunesmith.train import _private

SRC = Path(tunesmith.__file__).parent


def test_every_private_upstream_attribute_still_exists():
    assert _private.missing() == [], "update tunesmith/train/_private.py for the installed transformers"


def test_missing_reports_a_moved_attribute(monkeypatch):
    monkeypatch.setattr(_private, "REQUIRED", (*_private.REQUIRED, ("transformers.Trainer", "_renamed_upstream", "x")))
    assert _private.missing() == ["transformers.Trainer._renamed_upstream"]


def test_an_accessor_fails_loudly_when_the_attribute_is_gone():
    with pytest.raises(_private.UpstreamMoved, match=r"Trainer\._train_batch_size no longer exists"):
        _private.set_train_batch_size(object(), 2)
    with pytest.raises(_private.UpstreamMoved, match="_load_from_checkpoint"):
        _private.load_checkpoint_weights(object(), "ckpt")


def _private_upstream_accesses(path: Path) -> list[str]:
    """`obj._name` where obj is not `self`/`cls` (tunesmith's own privates) and `_name` is an upstream one."""
    upstream = {name for _, name, _ in _private.REQUIRED}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in upstream:
            found.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.Constant) and node.value in upstream:  # getattr(trainer, "_tr_loss")
            found.append(f"{path.relative_to(SRC)}:{node.lineno} '{node.value}'")
    return found


def test_no_module_but_private_touches_them():
    hits = [h for p in SRC.rglob("*.py") if p.name != "_private.py" for h in _private_upstream_accesses(p)]
    assert hits == []
