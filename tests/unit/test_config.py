import pytest

from tunesmith.config import apply_overrides, commented_yaml, load_recipe
from tunesmith.errors import RecipeError


def test_bad_recipe_lists_every_field_at_once(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "r.yaml").write_text(
        "data: {train: [train.jsonl, missing.jsonl], max_lenght: 10}\n"
        "training: {learning_rate: -1, batch_size: 0}\n"
        "adapter: {type: lorra}\n"
        "model: {trust_remote_code: true}\n"
    )
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "r.yaml")
    paths = {p for p, _ in exc.value.problems}
    assert {"data.max_lenght", "training.learning_rate", "training.batch_size", "adapter.type", "data.train.1", "model"} <= paths
    text = str(exc.value)
    assert "missing.jsonl" in text and "revision" in text
    assert text.startswith(f"{len(exc.value.problems)} problem(s)")


def test_overrides_and_relative_paths(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "r.yaml").write_text("data: {train: [train.jsonl]}\n")
    recipe = load_recipe(tmp_path / "r.yaml", ["training.learning_rate=1e-4", "adapter.r=8", "output_dir=out"])
    assert recipe.training.learning_rate == 1e-4 and recipe.adapter.r == 8
    assert recipe.data.train == [str((tmp_path / "train.jsonl").resolve())]
    assert recipe.run_dir == (tmp_path / "out").resolve()


def test_override_typo_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "r.yaml").write_text("data: {train: [train.jsonl]}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "r.yaml", ["training.learnig_rate=1e-4"])
    assert exc.value.problems[0][0] == "training.learnig_rate"
    with pytest.raises(RecipeError):
        apply_overrides({}, ["no-equals-sign"])


def test_commented_yaml_documents_every_field():
    text = commented_yaml({"training": {"learning_rate": 0.001, "seed": 1}, "name": "x"})
    assert "# Peak learning rate." in text and "learning_rate: 0.001" in text
    assert "# A name for this run" in text


def test_init_writes_a_valid_commented_recipe(tmp_path):
    from tunesmith.demo.pipeline import write_project
    from tunesmith.errors import TunesmithError

    path = write_project(tmp_path / "proj")
    recipe = load_recipe(path)
    assert recipe.data.train == [str((tmp_path / "proj" / "data" / "train.jsonl").resolve())]
    assert recipe.run_dir == (tmp_path / "proj" / "runs" / "demo").resolve()
    text = path.read_text()
    assert text.count("\n# ") + text.count("\n  # ") >= 30  # every field carries its description
    with pytest.raises(TunesmithError, match="already exists"):
        write_project(tmp_path / "proj")
