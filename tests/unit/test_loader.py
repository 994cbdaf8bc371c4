"""The one inference loader: run folders and model specs load the same way everywhere."""

from __future__ import annotations

import json
import shutil

import pytest

from tunesmith.config import load_recipe
from tunesmith.errors import ModelError
from tunesmith.loader import load_run_model, load_target
from tunesmith.run import load_run
from tunesmith.train import sft


def test_run_folder_and_model_spec(tiny_recipe, tiny_model_dir):
    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 2})))
    loaded = load_target(run.dir)
    assert loaded.run is not None and loaded.has_adapter and loaded.template_warning is None
    with loaded.model.disable_adapter():  # the base is the adapter-disabled tuned model
        pass
    plain = load_target(str(tiny_model_dir))
    assert plain.run is None and not plain.has_adapter
    assert plain.template_hash == loaded.template_hash


def test_missing_base_model_is_one_clear_error(tiny_recipe, tmp_path, tiny_model_dir):
    base_copy = tmp_path / "base-copy"
    shutil.copytree(tiny_model_dir, base_copy)
    run = sft.run(load_recipe(tiny_recipe(model={"base": str(base_copy)}, training={"max_steps": 1})))
    shutil.rmtree(base_copy)
    with pytest.raises(ModelError, match="not on this machine"):
        load_run_model(load_run(run.dir))
    assert json.loads((run.dir / "manifest.json").read_text())["base_model"]["path"] == str(base_copy)
