"""tunesmith verify: parity of a tiny Qwen 3 run through the training render, the adapter, the merged folder, the
served endpoint and the GGUF; a tampered merged folder (template, generation_config) or served template is a
divergence naming the first differing token, exit 3; a quantized export's differences are reported, not blocking."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from family_helpers import family_recipe
from tunesmith.cli import app

ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run

    return train_run(load_recipe(family_recipe(tmp_path_factory.mktemp("verify"), "qwen3")))


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory):
    from tunesmith.export.merge import merge

    return merge(run, tmp_path_factory.mktemp("merged") / "m")["out"]


def test_every_path_matches_training(run):
    result = CliRunner().invoke(app, ["verify", str(run.dir), "--prompts", "2", "--max-new-tokens", "8", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["family"] == "qwen3" and report["thinking"] is True
    statuses = {c["path"]: c["status"] for c in report["checks"]}
    assert statuses == {"adapter": "ok", "merged": "ok", "served": "ok", "gguf": "ok", "llama.cpp": "skipped"}


def _tampered(merged, tmp_path, edit):
    folder = tmp_path / "tampered"
    shutil.copytree(merged, folder)
    edit(folder)
    return folder


def test_a_tampered_template_in_the_merged_folder_exits_3_naming_the_token(run, merged, tmp_path):
    def edit(folder):  # the generation prompt loses its newline: "assistant\n" -> "assistant:"
        template = folder / "chat_template.jinja"
        text = template.read_text()
        template.write_text(text.replace('{{- "<|im_start|>assistant\\n" }}', '{{- "<|im_start|>assistant:" }}'))
        assert template.read_text() != text

    folder = _tampered(merged, tmp_path, edit)
    result = CliRunner().invoke(
        app, ["verify", str(run.dir), "--merged", str(folder), "--no-serve", "--no-gguf", "--prompts", "1"], env=ENV
    )
    assert result.exit_code == 3, result.output
    assert "merged: prompt 1: prompt at token" in result.output
    assert "expected '\\n'" in result.output and "':'" in result.output  # the first differing token, by name


def test_a_generation_config_without_the_end_of_turn_exits_3_naming_it(run, merged, tmp_path):
    def edit(folder):  # as a base model's generation_config: the tokenizer's EOS only
        path = folder / "generation_config.json"
        config = json.loads(path.read_text())
        config["eos_token_id"] = [config["eos_token_id"][-1]]
        path.write_text(json.dumps(config))

    folder = _tampered(merged, tmp_path, edit)
    result = CliRunner().invoke(
        app, ["verify", str(run.dir), "--merged", str(folder), "--no-serve", "--no-gguf", "--prompts", "1"], env=ENV
    )
    assert result.exit_code == 3, result.output
    assert "merged: stops: expected '<|im_end|>' (id 2) among the stop tokens" in result.output


def test_serve_check_parity_names_a_template_the_engine_changed(run):
    from tunesmith.serve.engine import load_engine
    from tunesmith.verify.paths import engine_parity

    engine = load_engine(run.dir)
    assert engine_parity(engine, n=2) == []
    changed = engine.tokenizer.chat_template.replace("<|im_start|>assistant\\n", "<|im_start|>model\\n")
    engine.tokenizer.chat_template = engine._count_tokenizer.chat_template = changed
    found = engine_parity(engine, n=2)
    assert found and found[0].what == "prompt" and found[0].path.startswith("served")


def test_a_quantized_export_is_reported_not_refused(run, merged, tmp_path):
    from pathlib import Path

    from tunesmith.export.gguf import export_gguf
    from tunesmith.verify.parity import verify

    out = tmp_path / "q.gguf"
    export_gguf(Path(merged), out, "q8_0", n_check=1, max_new_tokens=8)
    report = verify(run, merged=Path(merged), gguf_file=out, serve=False, prompts=2, max_new_tokens=8)
    assert report.passed  # any q8_0 difference is reported, never blocking
    gguf = next(c for c in report.checks if c.path == "gguf")
    assert gguf.status in ("ok", "reported") and all(not d.blocking for d in report.divergences if d.path == "gguf")


def test_llama_cpp_runs_the_file_with_its_embedded_template(run, merged, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the optional `llamacpp` extra) is not installed")
    from pathlib import Path

    from tunesmith.verify.parity import verify

    report = verify(run, merged=Path(merged), serve=False, prompts=2, max_new_tokens=8)
    assert next(c for c in report.checks if c.path == "llama.cpp").status in ("ok", "reported", "diverged")
    assert any(c.path == "llama.cpp" and c.status != "skipped" for c in report.checks)
