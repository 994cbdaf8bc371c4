"""The bundled demo: a project folder with a commented recipe + data, and the whole pipeline on it."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import models, outputs
from tunesmith.atomic import write_text_atomic
from tunesmith.chat import ChatSession
from tunesmith.config import (
    AdapterSection,
    EvalSection,
    LadderSection,
    ModelSection,
    RagSection,
    TrainingSection,
    commented_yaml,
    load_recipe,
)
from tunesmith.demo import sizing
from tunesmith.demo.sizing import BUDGET_S
from tunesmith.errors import TunesmithError
from tunesmith.eval.ladder import default_out, ladder
from tunesmith.eval.ladder_table import ladder_summary
from tunesmith.export.merge import merge
from tunesmith.train import entry

if TYPE_CHECKING:
    from tunesmith.eval.ladder_report import LadderReport

DATA_DIR = Path(__file__).parent / "data"
CATALOG_DIR = Path(__file__).parent / "catalog"

# Measured on a 2-core CPU (README, "What `make demo` proves"): after 60 steps the tuned model writes valid records
# (96-100%), and with retrieval gets 95% of the fields right against 66% without it. Training sees each prompt with
# its one retrieved catalog entry (rag.k = 1: each message names one product), as the tuned + RAG rung does.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"train": ["data/train.jsonl"], "eval": "data/eval.jsonl", "max_length": 512},
    "adapter": {"r": 16, "alpha": 32},
    "training": {"max_steps": 60, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 5, "save_steps": 30},
    # The task's bar (release gates, which the ladder also recommends against): well-formed records whose fields
    # (the catalog's SKU and warranty included) are right.
    "eval": {"max_new_tokens": 80, "batch_size": 20, "gates": {"json_valid": 0.95, "json_field_accuracy": 0.9}},
    "rag": {"index": "index", "k": 1},
    # 24 prompts per rung and the student rung left out keep `make demo` inside its time budget on 2 cores.
    "ladder": {
        "rungs": ["base", "base_few_shot", "base_rag", "tuned", "tuned_rag"],
        "few_shot_k": 2,
        "max_examples": 24,
        "batch_size": 24,
    },
}


def demo_recipe_values() -> dict[str, Any]:
    """The demo recipe as plain values: every default, with the demo's overrides on top."""
    values: dict[str, Any] = {"name": "demo", "method": "sft"}
    values["model"] = ModelSection().model_dump()
    values["data"] = {"eval_fraction": 0.1, "overlong": "drop", **DEMO_OVERRIDES["data"]}
    for name, section in (
        ("adapter", AdapterSection),
        ("training", TrainingSection),
        ("eval", EvalSection),
        ("ladder", LadderSection),
    ):
        values[name] = {**section().model_dump(), **DEMO_OVERRIDES.get(name, {})}
    values["rag"] = {**{k: f.default for k, f in RagSection.model_fields.items() if k != "index"}, **DEMO_OVERRIDES["rag"]}
    values["output_dir"] = "runs/demo"
    return values


PROJECT_FILES = ("recipe.yaml", "data/train.jsonl", "data/eval.jsonl", "catalog", "index")


def write_project(directory: Path, overwrite: bool = False, claimed: bool = False) -> Path:
    """Create DIRECTORY/recipe.yaml (commented), DIRECTORY/data/{train,eval}.jsonl, the product catalog
    DIRECTORY/catalog/*.md and its retrieval index DIRECTORY/index.

    DIRECTORY must be new, empty or an earlier `tunesmith init` (replaced only with overwrite, and only the files
    init wrote, unedited); `claimed`: the caller (the demo) already made the folder its own.
    """
    from tunesmith.rag.index import build_index

    if not claimed:
        directory = outputs.claim_dir(directory, "init", overwrite=overwrite, what="project folder")
    recipe = directory / "recipe.yaml"
    if not overwrite and any((directory / name).exists() for name in PROJECT_FILES):
        raise TunesmithError(
            f"{recipe} already exists", hint="Pass --overwrite to replace the files init wrote, or pick another folder."
        )
    header = (
        "# tunesmith recipe. Every field is documented above it; `tunesmith train recipe.yaml --set a.b=c` overrides one.\n"
        "# The data is the bundled demo task: support messages -> a strict one-line JSON ticket whose sku and warranty\n"
        "# come from the product catalog (catalog/, indexed in index/) that rag retrieves into every prompt.\n"
    )
    with outputs.replacing(directory, *PROJECT_FILES[:-1]) as stage:  # earlier files stay until these are complete
        (stage / "data").mkdir()
        for name in ("train.jsonl", "eval.jsonl"):
            shutil.copyfile(DATA_DIR / name, stage / "data" / name)
        shutil.copytree(CATALOG_DIR, stage / "catalog")
        write_text_atomic(stage / "recipe.yaml", header + commented_yaml(demo_recipe_values()) + "\n")
    build_index([directory / "catalog"], directory / "index")  # an earlier index is updated in place, kept on failure
    outputs.record(directory, "index")
    return recipe


def run_demo(
    directory: Path, console: Any, steps: int | None = None, fresh: bool = True, budget_s: float | None = None
) -> LadderReport:
    """Pull → init → train → the ladder → merge → chat; print what it proved. Returns the ladder report.

    budget_s: seconds the whole demo may take (default demo.sizing.BUDGET_S): its work is sized to fit this machine
    (demo/sizing.py), said before it starts and compared with the measured time at the end."""
    started = time.time()
    # Only a folder an earlier demo made is reused; with fresh, only the demo's own files in it are replaced.
    directory = outputs.claim_dir(directory, "demo", overwrite=fresh, what="--dir")
    # Recorded up front: a rerun after a crash still replaces them.
    outputs.record(directory, "runs/demo", "runs/demo-ladder", "merged")
    # The run folder records its own path, so it cannot be staged elsewhere: the earlier demo's files are set
    # aside for the run and put back if it fails.
    deadline = started + (budget_s if budget_s is not None else BUDGET_S)
    with outputs.set_aside(directory):
        report, timing = _demo_steps(directory, console, steps, deadline)
    console.rule("[bold]what this proved")
    console.print(proof(report), highlight=False)
    console.print(timing.summary(time.time() - started), highlight=False)
    zero, both = report.rung("base"), report.rung("tuned_rag")
    if (
        zero is None
        or both is None
        or both.status != "ok"
        or not (
            both.metrics["exact_match"] > zero.metrics["exact_match"] and both.metrics["json_valid"] > zero.metrics["json_valid"]
        )
    ):
        raise TunesmithError("tuned + RAG did not beat the base on exact match and JSON-valid rate")
    return report


def _demo_steps(directory: Path, console: Any, steps: int | None, deadline: float) -> tuple[LadderReport, Timing]:
    """The five steps of the demo in `directory` (claimed by the caller), sized to end by `deadline` (epoch seconds);
    the ladder report and what each part took against its estimate."""
    from rich.progress import Progress

    console.rule("[bold]1/5 base model")
    with console.status("importing SmolLM2-135M-Instruct from its GGUF (once) ..."):
        base = models.pull("smollm2-135m-instruct")
    console.print(f"base model: {base}")

    console.rule("[bold]2/5 project")
    recipe_path = write_project(directory, claimed=True)
    with console.status("sizing the demo for this machine (the planner's estimate, a matmul probe) ..."):
        plan = sizing.measure(load_recipe(recipe_path), deadline - time.time(), steps)
    recipe = load_recipe(recipe_path, [f"training.max_steps={plan.steps}", f"ladder.max_examples={plan.prompts}"])
    console.print(f"recipe: {recipe_path}  (train {recipe.data.train[0]}, eval {recipe.data.eval})")
    console.print(f"[bold]plan:[/] {plan.sentence()}", highlight=False)
    timing = Timing(plan)

    console.rule("[bold]3/5 train (LoRA SFT)")
    with timing.part("train"):
        run = entry.run(recipe)
    fig = run.manifest.figures
    console.print(
        f"{fig.global_step} steps in {fig.train_runtime_s:.0f}s, train loss {fig.train_loss or 0:.3f}, eval loss {fig.eval_loss or 0:.3f}"
    )

    console.rule("[bold]4/5 the ladder: prompt, few-shot, RAG, tuned, tuned + RAG on the same held-out prompts")
    with Progress(console=console, transient=True) as progress, timing.part("ladder"):
        report, folder = ladder(recipe, default_out(recipe), progress=progress, stop_early=plan.stop_early)
    console.print(ladder_summary(report, folder))

    console.rule("[bold]5/5 merge and chat")
    merged = merge(run, directory / "merged")
    console.print(f"merged -> {merged['out']}: greedy tokens identical on {merged['identical']}/{merged['prompts']} prompts")
    sample = "Hi, this is Ruth Keller from Pinewood Bakery. The OvenPro 9 I bought arrived with a cracked door. It cost 349.00 EUR. Please sort this out urgently."
    answer = ChatSession.open(str(run.dir)).ask(sample, 80)
    console.print(f"chat> {sample}\n[bold]tuned>[/] {answer}", highlight=False)
    return report, timing


class Timing:
    """Wall seconds of the demo's training and ladder, against the plan's estimates."""

    def __init__(self, plan: sizing.DemoPlan) -> None:
        self.plan, self.seconds = plan, {"train": 0.0, "ladder": 0.0}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.time()
        try:
            yield
        finally:
            self.seconds[name] = time.time() - started

    def summary(self, total_s: float) -> str:
        """The measured time at the end, next to the estimate made before starting."""
        p, s = self.plan, self.seconds
        return (
            f"Measured {total_s:.0f}s in all ({total_s / 60:.1f} min; estimated {p.total_s:.0f}s, budget "
            f"{p.budget_s:.0f}s when sized): training {s['train']:.0f}s (estimated {p.train_s:.0f}s), the ladder "
            f"{s['ladder']:.0f}s (estimated {p.ladder_s:.0f}s), the rest {total_s - s['train'] - s['ladder']:.0f}s."
        )


def proof(report: LadderReport) -> str:
    """The demo's claim in words: each rung's format (JSON-valid) and facts (exact match, catalog fields right)."""
    parts = []
    for rung in report.measured:
        m = rung.metrics
        parts.append(
            f"{rung.label}: JSON-valid {m.get('json_valid', 0):.0%}, exact match {m.get('exact_match', 0):.0%}, "
            f"fields right {m.get('json_field_accuracy', 0):.0%}"
        )
    return (
        f"On {report.n_examples} held-out messages about products that never appear in train — "
        + "; ".join(parts)
        + ". "
        + report.recommendation.sentence
    )
