"""`tunesmith demo --task tools`: the generated requests (held-out values never in train, clean under the audit, every
tool called), and the pipeline on a tiny ChatML model: train, eval with the tool metrics, serve, and the two-step
loop through the official openai client. What the served tiny model writes is chosen by the test."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from helpers import family_tokenizer
from tool_helpers import hermes, tiny_tool_model
from tunesmith.cli import app
from tunesmith.demo import tools_pipeline, tools_task
from tunesmith.errors import TunesmithError


def _calls(rows):
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for r in rows
        for m in r["messages"]
        for c in m.get("tool_calls") or []
    ]


def test_held_out_values_never_appear_in_train_and_the_audit_is_clean(tmp_path):
    from tunesmith.data.audit import audit

    train, held = tools_task.make_splits(240, 24)
    train_text = json.dumps(train)
    values = {str(v) for _, args in _calls(held) for v in args.values()}
    assert values and not [v for v in values if v in train_text]
    assert {n for n, _ in _calls(held)} <= {t["function"]["name"] for t in tools_task.TOOLS}
    assert any("tool_calls" not in r["messages"][-1] for r in held)  # some requests are answered in text
    paths = tools_task.write_splits(tmp_path, 240, 24)
    report = audit([str(p) for p in paths], tokenizer=family_tokenizer("chatml"))
    assert [f for f in report.findings if f.severity == "error"] == []
    assert not [f for f in report.findings if f.code in ("exact_duplicate", "eval_overlap")]
    per_tool = report.stats["tools"]["calls_per_tool"]
    assert set(per_tool) == {"lookup_order", "cancel_order", "refund_order", "store_hours"}
    # the second step of the loop is in train: results come back and the answer is written from them
    assert report.stats["tools"]["results"] > 30


def _script_loop(model, tokenizer, call: str, answer: str) -> None:
    """The served model writes `call` until a tool result is in its prompt, then `answer`."""
    import torch

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(input_ids=None, generation_config=None, **_):
        prompt = tokenizer.decode(input_ids[0])
        ids = tokenizer(answer if "<tool_response>" in prompt else call, add_special_tokens=False)["input_ids"] + [end]
        ids = ids[: generation_config.max_new_tokens]
        return torch.cat([input_ids, torch.tensor([ids] * input_ids.shape[0], dtype=input_ids.dtype)], dim=1)

    model.generate = generate


def test_the_pipeline_trains_scores_serves_and_completes_the_loop(tmp_path, monkeypatch):
    from tunesmith.serve import engine as engine_mod

    monkeypatch.setattr(tools_pipeline, "N_TRAIN", 12)
    monkeypatch.setattr(tools_pipeline, "N_EVAL", 4)
    loaded = engine_mod.load_engine

    def scripted_engine(run_dir, *args, **kwargs):
        engine = loaded(run_dir, *args, **kwargs)
        _script_loop(engine.model, engine.tokenizer, hermes("lookup_order", {"order_id": "QZ-5817"}), "It is on its way.")
        return engine

    monkeypatch.setattr(engine_mod, "load_engine", scripted_engine)
    base = tiny_tool_model(tmp_path / "tiny")
    console = Console(record=True, width=200)
    overrides = ("data.max_length=2048", "eval.max_new_tokens=8", "training.batch_size=2")
    # a random tiny model does not learn to call in one step: the demo says so instead of claiming a gain
    with pytest.raises(TunesmithError, match="did not beat the base"):
        tools_pipeline.run_tools_demo(tmp_path / "demo", console, steps=1, base=base, overrides=overrides)
    out = console.export_text()
    assert re.search(r"call format valid\s*│\s*\d+%\s*│\s*\d+%", out) and "arguments exact (as JSON)" in out
    # the served loop: the call parsed into tool_calls, run on the shop's backend, its result sent back, the answer
    assert 'call> {"name": "lookup_order", "arguments": {"order_id": "QZ-5817"}}' in out
    assert '"order_id": "QZ-5817", "status"' in out and "tuned> It is on its way." in out
    assert "called lookup_order, got the result, answered (tool_calls then stop)" in " ".join(out.split())
    report = json.loads((tmp_path / "demo" / "runs" / "tools" / "eval" / "report.json").read_text())
    assert report["tool_mode"] and {"tool_call_valid", "tool_arguments_match"} <= set(report["summary"]["tuned"])
    # the project's base renders tools: the ChatML family template, the weights linked
    assert "<tools>" in (tmp_path / "demo" / "base" / "chat_template.jinja").read_text()


def test_the_default_demo_task_is_unchanged_and_a_bad_task_is_refused(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("tunesmith.demo.pipeline.run_demo", lambda d, **kw: seen.setdefault("extract", d))
    monkeypatch.setattr("tunesmith.demo.tools_pipeline.run_tools_demo", lambda d, **kw: seen.setdefault("tools", d))
    runner = CliRunner()
    assert runner.invoke(app, ["demo"]).exit_code == 0 and seen["extract"].name == "demo-run"
    assert runner.invoke(app, ["demo", "--task", "tools"]).exit_code == 0 and seen["tools"].name == "demo-tools"
    bad = runner.invoke(app, ["demo", "--task", "chat"])
    assert bad.exit_code == 2 and "unknown task" in bad.output


def test_the_tools_demo_refuses_the_extract_demos_folder_and_leaves_it_whole(tmp_path):
    """Both demos take `--dir`: the tools demo in a folder the extract demo made is refused before anything is
    written, so the extract demo's run, data and recipe are not set aside and replaced."""
    from tunesmith import outputs
    from tunesmith.outputs import OutputError

    folder = outputs.claim_dir(tmp_path / "demo-run", "demo", what="--dir")  # as `tunesmith demo` marks it
    (folder / "runs" / "demo").mkdir(parents=True)
    (folder / "runs" / "demo" / "manifest.json").write_text("{}")
    (folder / "recipe.yaml").write_text("name: demo\n")
    outputs.record(folder, "runs/demo", "recipe.yaml")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    with pytest.raises(OutputError, match="tunesmith demo"):
        tools_pipeline.run_tools_demo(folder, Console(record=True), steps=1)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
    assert (folder / "recipe.yaml").read_text() == "name: demo\n"
