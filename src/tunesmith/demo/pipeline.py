"""The bundled demo: a project folder with a commented recipe + data, and the whole pipeline on it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tunesmith.config import (
    AdapterSection,
    EvalSection,
    ModelSection,
    TrainingSection,
    commented_yaml,
)
from tunesmith.errors import TunesmithError

DATA_DIR = Path(__file__).parent / "data"

# Measured on a 2-core CPU (README, "What `make demo` proves"): 60 steps take ~7.5 min here and lift exact match
# on the held-out split from 0 to most answers; fewer steps leave the JSON valid but more fields wrong.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"train": ["data/train.jsonl"], "eval": "data/eval.jsonl", "max_length": 512},
    "adapter": {"r": 16, "alpha": 32},
    "training": {"max_steps": 60, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 5, "save_steps": 30},
    "eval": {"max_new_tokens": 72, "batch_size": 20},
}


def demo_recipe_values() -> dict[str, Any]:
    """The demo recipe as plain values: every default, with the demo's overrides on top."""
    values: dict[str, Any] = {"name": "demo", "method": "sft"}
    values["model"] = ModelSection().model_dump()
    values["data"] = {"eval_fraction": 0.1, "overlong": "drop", **DEMO_OVERRIDES["data"]}
    for name, section in (("adapter", AdapterSection), ("training", TrainingSection), ("eval", EvalSection)):
        values[name] = {**section().model_dump(), **DEMO_OVERRIDES.get(name, {})}
    values["output_dir"] = "runs/demo"
    return values


PROJECT_FILES = ("recipe.yaml", "data/train.jsonl", "data/eval.jsonl")


def write_project(directory: Path, overwrite: bool = False, claimed: bool = False) -> Path:
    """Create DIRECTORY/recipe.yaml (commented) and DIRECTORY/data/{train,eval}.jsonl.

    DIRECTORY must be new, empty or an earlier `tunesmith init` (replaced only with overwrite, and only the files
    init wrote, unedited); `claimed`: the caller (the demo) already made the folder its own.
    """
    from tunesmith import outputs

    if not claimed:
        directory = outputs.claim_dir(directory, "init", overwrite=overwrite, what="project folder")
    recipe = directory / "recipe.yaml"
    if any((directory / name).exists() for name in PROJECT_FILES):
        raise TunesmithError(f"{recipe} already exists", hint="Pass --overwrite to replace the files init wrote, or pick another folder.")
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "eval.jsonl"):
        shutil.copyfile(DATA_DIR / name, directory / "data" / name)
    header = (
        "# tunesmith recipe. Every field is documented above it; `tunesmith train recipe.yaml --set a.b=c` overrides one.\n"
        "# The data is the bundled demo task: support messages -> a strict one-line JSON ticket.\n"
    )
    recipe.write_text(header + commented_yaml(demo_recipe_values()) + "\n", encoding="utf-8")
    outputs.record(directory, *PROJECT_FILES)
    return recipe


def run_demo(directory: Path, console: Any, steps: int | None = None, fresh: bool = True) -> dict[str, Any]:
    """Pull → init → train → eval → merge → chat; print what it proved. Returns the eval report."""
    from rich.progress import Progress

    from tunesmith.chat import ChatSession
    from tunesmith.cli.evaluate import comparison_table
    from tunesmith.config import load_recipe
    from tunesmith.eval.compare import evaluate
    from tunesmith.export.merge import merge
    from tunesmith.models import pull
    from tunesmith.train import sft

    from tunesmith import outputs

    started = time.time()
    # Only a folder an earlier demo made is reused; with fresh, only the demo's own files in it are removed.
    directory = outputs.claim_dir(directory, "demo", overwrite=fresh, what="--dir")
    outputs.record(directory, "runs/demo", "merged")  # recorded up front: a rerun after a crash still removes them
    console.rule("[bold]1/5 base model")
    with console.status("importing SmolLM2-135M-Instruct from its GGUF (once) ..."):
        base = pull("smollm2-135m-instruct")
    console.print(f"base model: {base}")

    console.rule("[bold]2/5 project")
    recipe_path = write_project(directory, claimed=True)
    recipe = load_recipe(recipe_path, [f"training.max_steps={steps}"] if steps else [])
    console.print(f"recipe: {recipe_path}  (train {recipe.data.train[0]}, eval {recipe.data.eval})")

    console.rule("[bold]3/5 train (LoRA SFT)")
    run = sft.run(recipe)
    fig = run.manifest.figures
    console.print(f"{fig.global_step} steps in {fig.train_runtime_s:.0f}s, train loss {fig.train_loss or 0:.3f}, eval loss {fig.eval_loss or 0:.3f}")

    console.rule("[bold]4/5 base vs tuned on the held-out split")
    with Progress(console=console, transient=True) as progress:
        report = evaluate(run, progress=progress)
    console.print(comparison_table(report))

    console.rule("[bold]5/5 merge and chat")
    merged = merge(run, directory / "merged")
    console.print(f"merged -> {merged['out']}: greedy tokens identical on {merged['identical']}/{merged['prompts']} prompts")
    sample = "Hi, this is Ruth Keller from Pinewood Bakery. The OvenPro 9 I bought arrived with a cracked door. It cost 349.00 EUR. Please sort this out urgently."
    answer = ChatSession.open(str(run.dir)).ask(sample, 80)
    console.print(f"chat> {sample}\n[bold]tuned>[/] {answer}", highlight=False)

    s = report.summary
    console.rule("[bold]what this proved")
    console.print(
        f"On {report.n_examples} held-out examples the tuned adapter scored exact match "
        f"{s['base']['exact_match']:.0%} -> {s['tuned']['exact_match']:.0%} and JSON-valid "
        f"{s['base']['json_valid']:.0%} -> {s['tuned']['json_valid']:.0%} against its base; "
        f"it won {report.judgement.wins} of {report.n_examples} examples. Total {time.time() - started:.0f}s.\n"
        f"report: {run.dir / 'eval' / 'report.html'}"
    )
    if s["tuned"]["exact_match"] <= s["base"]["exact_match"] or s["tuned"]["json_valid"] <= s["base"]["json_valid"]:
        raise TunesmithError("the tuned model did not beat its base on exact match and JSON-valid rate")
    return report
