"""Launch from the studio reaches only what the user configured: no model, file or code outside its folders.

A model folder elsewhere whose Python writes a marker file when imported stands in for a hostile checkpoint;
the marker must never appear, whatever the recipe says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import chat_rows, write_jsonl
from studio_helpers import StudioClient
from tunesmith.errors import RecipeError
from tunesmith.studio.app import StudioConfig, create_app

CODE = """import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import LlamaConfig
class EvilConfig(LlamaConfig):
    model_type = "evil"
"""


def remote_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config names its own Python (auto_map): importing it writes `marker`."""
    folder.mkdir(parents=True)
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (folder / name).write_text(CODE.format(marker=str(marker)))
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map, "architectures": ["EvilModel"]}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": auto_map["AutoTokenizer"]}}))
    return folder


@pytest.fixture
def studio(tmp_path):
    root, data, models, outside = tmp_path / "runs", tmp_path / "data", tmp_path / "models", tmp_path / "elsewhere"
    for d in (root, data, models, outside):
        d.mkdir()
    write_jsonl(data / "train.jsonl", chat_rows(12))
    (models / "mine").mkdir()
    (models / "mine" / "config.json").write_text("{}")
    app = create_app(StudioConfig(runs=[root], data=[data], models=[models]))
    return app, StudioClient(app), tmp_path


def recipe(tmp_path: Path, **sections) -> str:
    values = {
        "name": "x",
        "model": {"base": "smollm2-135m-instruct"},
        "data": {"train": [str(tmp_path / "data" / "train.jsonl")]},
        "training": {"max_steps": 1},
        "output_dir": str(tmp_path / "runs" / "x"),
    }
    for key, value in sections.items():
        values[key] = {**values[key], **value} if isinstance(values.get(key), dict) else value
    return yaml.safe_dump(values)


def started(app) -> list:
    """Training processes the launch started, each waited for (so whatever they would run has run)."""
    procs = list(getattr(app.state, "launcher", None) and app.state.launcher.procs.values() or [])
    for p in procs:
        p.wait(timeout=600)
    return procs


@pytest.mark.parametrize("where", ["elsewhere", "inside the studio's folders"])
def test_a_model_that_runs_its_own_code_is_never_launched(studio, where):
    app, client, tmp_path = studio
    marker = tmp_path / "remote-code-ran"
    folder = tmp_path / ("elsewhere" if where == "elsewhere" else "models") / "evil"
    remote_code_model(folder, marker)
    text = recipe(tmp_path, model={"base": str(folder), "trust_remote_code": True, "revision": "0" * 40})
    res = client.post("/launch/start", data={"recipe": text})
    procs = started(app)
    assert not marker.exists()  # the checkpoint's Python never ran
    assert res.status_code == 422 and procs == [] and not (tmp_path / "runs" / "x").exists()
    assert "trust_remote_code cannot be turned on from the studio" in res.text
    if where == "elsewhere":
        assert "model.base" in res.text and "nor a model inside the studio" in res.text
    preview = client.post("/launch/preview", data={"train": ["1/train.jsonl"], "base": str(folder), "name": "p"})
    assert preview.status_code == 200 and not marker.exists()


def test_a_recipe_template_cannot_reach_python(studio):
    """rag.template is Jinja2: rendered in a sandbox, so a template cannot import and run anything."""
    app, client, tmp_path = studio
    marker = tmp_path / "template-ran"
    (tmp_path / "data" / "index").mkdir()
    payload = "{{ context }}{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch " + str(marker) + "') }}"
    res = client.post(
        "/launch/start", data={"recipe": recipe(tmp_path, rag={"index": str(tmp_path / "data" / "index"), "template": payload})}
    )
    assert res.status_code == 422 and "rag.template" in res.text and not marker.exists() and started(app) == []


def make_outside(tmp_path: Path) -> None:
    """A model, a reward, a schema, graders, an index and data outside the studio's folders; a link to the model."""
    out = tmp_path / "elsewhere"
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "reward.py").write_text("def score(**kw):\n    return [0.0]\n")
    (out / "schema.json").write_text("{}")
    (out / "graders.json").write_text("[]")
    (out / "index").mkdir(exist_ok=True)
    write_jsonl(out / "train.jsonl", chat_rows(4))
    (tmp_path / "models" / "link").symlink_to(out / "model", target_is_directory=True)


def outside_cases(tmp_path: Path) -> dict[str, tuple[str, dict]]:
    out, link = tmp_path / "elsewhere", tmp_path / "models" / "link"
    py = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    return {  # case: (the field the refusal must name, the recipe sections that point out)
        "hub id": ("model.base", {"model": {"base": "HuggingFaceTB/SmolLM2-135M-Instruct"}}),
        "model folder": ("model.base", {"model": {"base": str(out / "model")}}),
        "symlink out of --models": ("model.base", {"model": {"base": str(link)}}),
        "teacher": ("distill.teacher", {"method": "distill", "distill": {"teacher": str(out / "model")}}),
        "student": ("ladder.student", {"ladder": {"student": str(out / "model")}}),
        "judge folder": ("eval.judge.model", {"eval": {"judge": {"model": str(out / "model")}}}),
        "judge endpoint": ("eval.judge.model", {"eval": {"judge": {"model": "http://evil.example/v1"}}}),
        "graders file": ("eval.graders", {"eval": {"graders": str(out / "graders.json")}}),
        "python grader": ("eval.graders.p", {"eval": {"graders": [py]}}),
        "python grader in multi": (
            "eval.graders.m.inner",
            {
                "eval": {
                    "graders": [
                        {"type": "multi", "name": "m", "graders": {"inner": {**py, "name": "inner"}}, "calculate_output": "inner"}
                    ]
                }
            },
        ),
        "score_model grader": (
            "eval.graders.s.model",
            {"eval": {"graders": [{"type": "score_model", "name": "s", "model": str(out / "model"), "input": []}]}},
        ),
        "label_model grader": (
            "eval.graders.l.model",
            {
                "eval": {
                    "graders": [
                        {
                            "type": "label_model",
                            "name": "l",
                            "model": str(out / "model"),
                            "input": [],
                            "labels": ["a"],
                            "passing_labels": ["a"],
                        }
                    ]
                }
            },
        ),
        "reward module": ("grpo.rewards.0.function", {"method": "grpo", "grpo": {"rewards": ["os:system"]}}),
        "reward file": (
            "grpo.rewards.0.function",
            {"method": "grpo", "grpo": {"rewards": [{"type": "custom", "function": f"{out / 'reward.py'}:score"}]}},
        ),
        "reward schema": (
            "grpo.rewards.0.json_schema",
            {"method": "grpo", "grpo": {"rewards": [{"type": "json_schema_valid", "json_schema": str(out / "schema.json")}]}},
        ),
        "rag index": ("rag.index", {"rag": {"index": str(out / "index")}}),
        "rag embedder": ("rag.embedder", {"rag": {"index": str(tmp_path / "data"), "embedder": str(out / "model")}}),
        "output folder": ("output_dir", {"output_dir": str(out / "run")}),
        "train file": ("data.train.0", {"data": {"train": [str(out / "train.jsonl")]}}),
        "eval file, relative": ("data.eval", {"data": {"eval": "../../../elsewhere/train.jsonl"}}),
    }


@pytest.mark.parametrize("case", list(outside_cases(Path("/nonexistent"))))
def test_every_field_that_points_at_a_model_file_or_code_is_confined(studio, case):
    app, client, tmp_path = studio
    make_outside(tmp_path)
    field, sections = outside_cases(tmp_path)[case]
    res = client.post("/launch/start", data={"recipe": recipe(tmp_path, **sections)})
    assert res.status_code == 422, res.text[:500]
    assert f"{field}: " in res.text
    assert started(app) == [] and not (tmp_path / "runs" / "x").exists()


def test_what_the_user_configured_is_allowed(tmp_path):
    from tunesmith.studio.confine import check_launch

    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reward.py").write_text("def score(**kw):\n    return [0.0]\n")
    files, models = [tmp_path / "runs", tmp_path / "data"], [tmp_path / "models"]
    good = {
        "model": {"base": str(tmp_path / "models" / "mine")},
        "method": "grpo",
        "grpo": {"rewards": ["json_valid", {"type": "custom", "function": f"{tmp_path / 'data' / 'reward.py'}:score"}]},
        "distill": {"teacher": "smollm2-135m-instruct"},
        "eval": {"judge": {"model": "http://127.0.0.1:8000/v1"}, "graders": [{"type": "string_check", "name": "s"}]},
        "rag": {"index": str(tmp_path / "data"), "embedder": "all-MiniLM-L6-v2"},
        "data": {"train": [str(tmp_path / "data" / "t.jsonl")]},
        "output_dir": str(tmp_path / "runs" / "new"),
    }
    check_launch(good, tmp_path / "runs" / ".studio" / "recipes", files, models)  # raises nothing
    with pytest.raises(RecipeError) as err:
        check_launch(
            {**good, "model": {"base": str(tmp_path / "models" / "mine"), "trust_remote_code": True}}, tmp_path, files, models
        )
    assert [p for p, _ in err.value.problems] == ["model.trust_remote_code"]


def test_a_model_under_models_previews_without_a_refusal(studio):
    _, client, tmp_path = studio
    html = client.post(
        "/launch/preview", data={"train": ["1/train.jsonl"], "base": str(tmp_path / "models" / "mine"), "name": "p"}
    ).text
    assert 'id="audit-summary"' in html and 'id="recipe-error"' not in html
