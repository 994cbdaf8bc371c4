"""The method registry: every method declares every part in one object, the one training path runs any registered
method (a toy one included), nothing else recognises a method by its name, precision is decided once for all of
them, and manifests written before the typed records still read."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tunesmith import method_sections
from tunesmith.config import Recipe, load_recipe, recipe_from_dict
from tunesmith.records import MethodDetails, read_manifest, write_manifest
from tunesmith.sections import Section
from tunesmith.train import methods
from tunesmith.train.method import Datasets, Method, Parts

SRC = Path(__file__).resolve().parents[2] / "src" / "tunesmith"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "manifest-v1"
BUILT_IN = ["sft", "dpo", "grpo", "distill", "reward"]


def test_the_registry_holds_the_five_methods_and_each_declares_every_part():
    assert methods.names() == BUILT_IN
    for m in methods.registered():
        assert m.help and m.row_shape and m.measured_as and m.reference, m.name
        assert m.section is None or issubclass(m.section, Section)
        assert m.details is None or issubclass(m.details, MethodDetails)
        trained = type(m)  # a method trains itself, or says which method trains it (distill sequence: SFT)
        assert trained.datasets is not Method.datasets and trained.trainer is not Method.trainer, m.name
        # what the recipe knows of it (section, rules, preflight) is declared below the Recipe, in method_sections
        assert m.declaration() is method_sections.get(m.name) and m.section is m.declaration().section, m.name
        for field in m.declaration().rules:  # each rule guards a field the Recipe has
            assert field in Recipe.model_fields, (m.name, field)
    assert method_sections.names() == BUILT_IN
    # The recipe takes its method names and method sections from the declarations the registry's methods carry.
    sections = {m.name: m.section for m in methods.registered() if m.section is not None}
    assert set(sections) == {"dpo", "grpo", "distill", "reward"}
    for name, section in sections.items():
        assert Recipe.model_fields[name].annotation is section
    assert Recipe.model_json_schema()["properties"]["method"]["enum"] == BUILT_IN
    with pytest.raises(Exception, match="one of sft, dpo, grpo, distill, reward"):
        recipe_from_dict({"method": "ppo", "data": {"train": ["t.jsonl"]}}, Path("."), check_files=False)


class ToyDetails(MethodDetails):
    rows: int
    first_prompt: str


class Toy(Method[Section]):
    """A method that exists only in this test: SFT's rows, padded batches, its own manifest record."""

    name = "toy"
    help = "a test's own method"
    details = ToyDetails
    row_shape = "a conversation"
    measured_as = "the rendered conversation"
    reference = "the demonstration's last answer"

    def datasets(self, recipe: Any, tokenizer: Any) -> Datasets:
        from tunesmith.train.sft import METHOD as SFT

        return SFT.datasets(recipe, tokenizer)

    def trainer(self, recipe: Any, parts: Parts) -> Any:
        from tunesmith.train import _trl

        self.seen = parts
        return _trl.sft_trainer(recipe, parts)

    def record(self, recipe: Any, trainer: Any, final_eval: dict[str, float]) -> ToyDetails:
        first = trainer.train_dataset[0]["input_ids"][:3]
        return ToyDetails(rows=len(trainer.train_dataset), first_prompt=str(first))

    def summary(self, details: ToyDetails) -> list[str]:
        return [f"toy: {details.rows} rows"]


@pytest.fixture
def toy(monkeypatch):
    from tunesmith import records

    method = Toy()
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))  # the registry as it was after this test
    monkeypatch.setattr(records, "_DETAILS", dict(records._DETAILS))
    monkeypatch.setattr(method_sections, "_DECLARED", dict(method_sections._DECLARED))
    methods.register(method)
    assert "toy" in method_sections.names()  # a method registered later is a recipe's `method` too
    return method


def test_a_method_registered_in_a_test_trains_through_the_one_path(toy, tiny_recipe):
    from tunesmith.data.audit import audit_recipe
    from tunesmith.run import load_run
    from tunesmith.train.entry import run as train_run
    from tunesmith.train.entry import summary

    recipe = load_recipe(tiny_recipe(method="toy", training={"max_steps": 2}))
    run = train_run(recipe)
    assert toy.seen.levers.packing == "off" and not toy.seen.levers.labelled_logits  # no row levers: it does not pack
    m = load_run(run.dir).manifest
    assert m.method == "toy" and isinstance(m.details, ToyDetails) and m.details.rows == m.tokens.train.kept == 24
    assert m.speed is not None and m.figures.global_step == 2
    assert "toy: 24 rows" in summary(run)
    assert (run.dir / "data" / "eval.jsonl").exists()  # the held-out rows through the method's eval_examples
    assert audit_recipe(recipe, toy, toy.seen.tokenizer).stats["tokens"]["method"] == "toy"


def _compared_names(node: ast.Compare) -> set[str]:
    found = set()
    for side in [node.left, *node.comparators]:
        items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        found |= {i.value for i in items if isinstance(i, ast.Constant) and i.value in BUILT_IN}
    return found


def test_no_code_outside_the_method_modules_compares_method_names():
    """`recipe.method == "grpo"` is how methods drift apart: code asks the method (Method attributes) instead."""
    own = {SRC / "train" / f"{name}.py" for name in [*BUILT_IN, "method", "methods"]}
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        if path in own:
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Compare) and _compared_names(node) and "method" in ast.get_source_segment(text, node):
                offences.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.get_source_segment(text, node)}")
            picks = path.parent.name == "train" and path.name in ("__init__.py", "skeleton.py")
            if (
                picks
                and isinstance(node, (ast.Attribute, ast.Name))
                and "import_module" in (getattr(node, "attr", ""), getattr(node, "id", ""))
            ):
                offences.append(f"{path.relative_to(SRC)}:{node.lineno}: a method picked by module name")
    assert not offences, "\n".join(offences)


def _recipe(name: str, precision: str = "auto") -> Recipe:
    sections: dict[str, Any] = {
        "dpo": {},
        "grpo": {"grpo": {"rewards": ["json_valid"]}},
        "distill": {"distill": {"teacher": "teacher", "mode": "logits"}},
    }.get(name, {})
    data = {"method": name, "data": {"train": ["t.jsonl"]}, "speed": {"precision": precision}, **sections}
    return recipe_from_dict(data, Path("."), check_files=False)


@pytest.mark.parametrize("units", [True, False], ids=["cpu-with-bf16-units", "cpu-without"])
def test_one_precision_decision_for_every_method(monkeypatch, tmp_path, units):
    """speed.precision auto: bf16 autocast and a bf16 frozen base where the CPU multiplies in bf16, fp32 where it
    does not, for every method alike (GRPO trained fp32 on a bf16 CPU before); the trainer's arguments follow."""
    import torch

    from tunesmith.train import _trl, speed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: units)
    for name in BUILT_IN:
        recipe = _recipe(name)
        levers = speed.for_method(recipe, methods.get(name).trains_as(recipe))
        assert (levers.bf16, levers.base_dtype) == ((True, "bfloat16") if units else (False, "auto")), name
        args = _trl.common_args(recipe, tmp_path, False, levers)
        assert args["bf16"] is units and args["use_cpu"] is True, name
        forced = _recipe(name, "bf16")  # an explicit precision is kept whatever the hardware
        assert speed.for_method(forced, methods.get(name).trains_as(forced)).bf16, name
    grpo = _recipe("grpo")
    levers = speed.for_method(grpo, methods.get("grpo"))
    # GRPO samples outside autocast: the adapter's input is cast to its fp32 weights there
    assert levers.adapter_input_cast and levers.packing == "off"
    assert _trl.build_grpo_config(grpo, grpo.grpo, tmp_path, levers).bf16 is units


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo", "distill-sequence", "distill-logits"])
def test_a_manifest_written_before_the_typed_records_still_reads(tmp_path, name):
    """The fixtures are manifests (schema_version 1) written by tiny runs of each method before the method registry."""
    from tunesmith.records import MANIFEST_VERSION, CheckpointSelection, Plan, Speed, TokenCounts

    path = tmp_path / "manifest.json"
    shutil.copy(FIXTURES / f"{name}.json", path)
    raw = json.loads(path.read_text())
    m = read_manifest(path)
    assert raw["schema_version"] == 1 and m.schema_version == MANIFEST_VERSION
    assert m.family is None  # recorded from version 3 on: `models info` detects it for such a run
    assert isinstance(m.tokens.train, TokenCounts) and m.tokens.train.examples == raw["tokens"]["train"]["examples"]
    assert m.faults.final_batch_size == raw["faults"]["final_batch_size"]
    method = name.split("-")[0]
    if raw["speed"]:
        assert isinstance(m.speed, Speed) and m.speed.bf16 == raw["speed"]["bf16"]
    else:
        assert m.speed is None  # GRPO recorded no levers then
    if raw["plan"]:
        assert isinstance(m.plan, Plan) and m.plan.measured is not None
        assert m.plan.measured.peak_mb == raw["plan"]["measured"]["peak_mb"]
    if raw["checkpoint_selection"]:
        assert isinstance(m.checkpoint_selection, CheckpointSelection)
        assert m.checkpoint_selection.chosen == raw["checkpoint_selection"]["chosen"]
    details, was = methods.get(method).details, raw.get(method)
    if was:  # version 1 kept these under the method's name; now the method's own record reads them
        assert details is not None and isinstance(m.details, details)
        spot = {
            "dpo": lambda d: d.final_eval == was["final_eval"] and d.beta == was["beta"],
            "grpo": lambda d: d.warnings == was["warnings"] and [r.type for r in d.rewards] == ["json_valid", "exact_match"],
            "distill": lambda d: d.mode == was["mode"] and d.teacher_spec == was["teacher_spec"],
        }
        assert spot[method](m.details)
        if name == "distill-sequence":
            assert m.details.files.train.rows == was["files"]["train"]["rows"] and m.details.audit.warnings == 1
    else:
        assert m.details is None
    write_manifest(path, m)  # written back as the current version and read again: the same record
    assert read_manifest(path) == m and json.loads(path.read_text())["schema_version"] == MANIFEST_VERSION
