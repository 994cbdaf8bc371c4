"""`tunesmith demo --task tools`: teach the embedded SmolLM2 to call a shop's four tools, measure base vs tuned on
held-out requests, then serve the tuned run and complete a two-step tool loop with the official `openai` client."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import families, models, outputs
from tunesmith.atomic import write_text_atomic
from tunesmith.config import AdapterSection, EvalSection, SpeedSection, TrainingSection, commented_yaml, load_recipe
from tunesmith.demo import sizing, tools_task
from tunesmith.errors import TunesmithError
from tunesmith.eval.registry import metric
from tunesmith.serve import engine as engine_module
from tunesmith.serve.security import KeyRing, generate_key
from tunesmith.tables import Table
from tunesmith.train import entry
from tunesmith.train.methods import evaluate
from tunesmith.verify.served import running

if TYPE_CHECKING:
    from tunesmith.records import EvalReport

SHOWN = ("tool_call_valid", "tool_name_match", "tool_arguments_match", "tool_decision")  # the demo's table, in order
# SmolLM2's own template renders no tools: the demo's base is the same weights with the ChatML family's template,
# which renders tools, calls and results (families/templates/chatml.jinja).
BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
OVERRIDES: dict[str, dict[str, Any]] = {
    "adapter": {"r": 16, "alpha": 32},
    "training": {"max_steps": 60, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 5, "save_steps": 60},
    "eval": {"max_new_tokens": 64, "batch_size": 24, "gates": {"tool_arguments_match": 0.8}},
    # Every row opens with the same ~345 tokens (system prompt and tool list) and adds ~85 of its own: a pass of the
    # whole batch runs that prefix once (speed.shared_prefix). On the AVX2-capped EPYC (fp32) a step took 3.8 s,
    # 5.5 s in the default's 2-row passes and 9.5 s one row at a time, at 3.2 GB peak either way (docs/benchmarks.md).
    "speed": {"micro_batch_tokens": 512},
}
N_TRAIN, N_EVAL = 240, 24  # rows: 60 steps of 4 see each train row once
LOOP_REQUEST = "Hi, where is my order QZ-5817? It has been a week."  # its order id is in neither split


def tool_base(source: Path, out: Path) -> Path:
    """`out`: the model folder `source` with the ChatML family's tool-rendering template (weights linked, not
    copied, where the file system allows)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        if not (source / name).exists():
            continue
        target = out / name
        target.unlink(missing_ok=True)
        try:
            os.symlink((source / name).resolve(), target)
        except OSError:
            shutil.copyfile(source / name, target)
    template = families.FAMILIES["chatml"].template_text()
    assert template is not None
    write_text_atomic(out / "chat_template.jinja", template)
    return out


def recipe_values(base: str) -> dict[str, Any]:
    """The demo recipe as plain values: every default, the demo's overrides on top."""
    values: dict[str, Any] = {"name": "tools", "method": "sft", "model": {"base": base}}
    values["data"] = {"train": ["data/train.jsonl"], "eval": "data/eval.jsonl", "max_length": 640, "overlong": "drop"}
    sections = (("adapter", AdapterSection), ("training", TrainingSection), ("eval", EvalSection), ("speed", SpeedSection))
    for name, section in sections:
        values[name] = {**section().model_dump(), **OVERRIDES[name]}
    values["output_dir"] = "runs/tools"
    return values


def write_project(directory: Path, base: Path) -> Path:
    """DIRECTORY/base (the tool-rendering model folder), DIRECTORY/data/{train,eval}.jsonl and a commented recipe."""
    tool_base(base, directory / "base")
    tools_task.write_splits(directory / "data", N_TRAIN, N_EVAL)
    header = (
        "# tunesmith recipe for the bundled tool-calling demo: support requests -> calls to four tools (OpenAI's\n"
        "# `tools` and `tool_calls` in every row); held-out order ids, amounts and cities never appear in train.\n"
    )
    recipe = directory / "recipe.yaml"
    # model.base names a folder: resolved against the working directory, so the recipe gives it whole
    write_text_atomic(recipe, header + commented_yaml(recipe_values(str((directory / "base").resolve()))) + "\n")
    outputs.record(directory, "recipe.yaml")  # a later demo refuses to replace it once edited
    return recipe


@dataclass
class Loop:
    """The served two-step loop: the call the model made, the tool's result, the model's final answer."""

    call: dict[str, Any] | None
    result: dict[str, Any] | None
    answer: str | None
    finish_reasons: tuple[str, ...]


def two_step(client: Any, model: str, request: str, max_tokens: int = 64) -> Loop:
    """Ask `request` with the demo's tools; run the call the model makes on the shop's backend; send the result back
    and return the model's final answer (Loop.call None: it answered without calling)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": tools_task.SYSTEM}, {"role": "user", "content": request}]
    first = client.chat.completions.create(
        model=model, messages=messages, tools=tools_task.TOOLS, temperature=0, max_tokens=max_tokens
    )
    choice = first.choices[0]
    if not choice.message.tool_calls:
        return Loop(None, None, choice.message.content, (choice.finish_reason,))
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    result = tools_task.run_tool(call.function.name, arguments)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    second = client.chat.completions.create(
        model=model, messages=messages, tools=tools_task.TOOLS, temperature=0, max_tokens=max_tokens
    )
    done = second.choices[0]
    return Loop(
        {"name": call.function.name, "arguments": arguments},
        result,
        done.message.content,
        (choice.finish_reason, done.finish_reason),
    )


def serve_loop(run_dir: Path, request: str = LOOP_REQUEST) -> Loop:
    """The tuned run behind the real server (loopback, a fresh key), asked `request` by the official openai client."""
    import openai

    from tunesmith.serve.app import ServeSettings, create_app

    engine = engine_module.load_engine(run_dir)
    key = generate_key()
    app = create_app(lambda: engine, ServeSettings(keys=KeyRing.build([key], [])))
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        return two_step(client, engine.default_name, request)


def table_rows(report: EvalReport) -> list[tuple[str, list[float]]]:
    """(metric label, [base, tuned]) for the demo's table, from the eval report's summary."""
    summary = report.summary
    return [
        (metric(m).label, [summary[s].get(m, 0.0) for s in ("base", "tuned")]) for m in SHOWN if m in summary.get("tuned", {})
    ]


def run_tools_demo(
    directory: Path,
    console: Any,
    steps: int | None = None,
    fresh: bool = True,
    base: Path | None = None,
    overrides: tuple[str, ...] = (),
    budget_s: float | None = None,
) -> Loop:
    """Pull → project → train → eval (base vs tuned) → serve and a two-step loop; print what it proved.
    `base`: a model folder instead of the embedded SmolLM2, `overrides`: recipe `--set` values (tests).
    budget_s: seconds the whole demo may take (default sizing.TOOLS_BUDGET_S): its training steps are sized from the
    planner's estimate for this machine, said before training starts and compared with the measured time at the end."""
    started = time.time()
    deadline = started + (budget_s if budget_s is not None else sizing.TOOLS_BUDGET_S)
    directory = outputs.claim_dir(directory, "demo --task tools", overwrite=fresh, what="--dir")  # not the extract demo's folder
    outputs.record(directory, "runs/tools", "base", "data", "recipe.yaml")
    with outputs.set_aside(directory):
        report, loop, plan = _steps(directory, console, list(overrides), base, steps, deadline)
    tuned = report.summary["tuned"]
    console.rule("[bold]what this proved")
    total = time.time() - started
    console.print(
        proof(report, loop) + f" Measured {total:.0f}s in all ({total / 60:.1f} min; estimated {plan.total_s:.0f}s, "
        f"budget {plan.budget_s:.0f}s when sized).",
        highlight=False,
    )
    if loop.call is None or tuned.get("tool_arguments_match", 0.0) <= report.summary["base"].get("tool_arguments_match", 0.0):
        raise TunesmithError("the tuned model did not beat the base on arguments exact, or did not call in the served loop")
    return loop


def _steps(
    directory: Path, console: Any, overrides: list[str], base: Path | None, steps: int | None, deadline: float
) -> tuple[EvalReport, Loop, sizing.ToolsPlan]:
    console.rule("[bold]1/4 base model")
    source = base if base is not None else models.pull("smollm2-135m-instruct")
    console.print(f"base model: {source} (with the ChatML family's tool template)")

    console.rule("[bold]2/4 project")
    recipe_path = write_project(directory, source)
    recipe = load_recipe(recipe_path, overrides)
    console.print(f"recipe: {recipe_path}; tools: {', '.join(t['function']['name'] for t in tools_task.TOOLS)}")
    with console.status("sizing the demo for this machine (the planner's estimate, a matmul probe) ..."):
        plan = sizing.size_tools(sizing.estimate(recipe), deadline - time.time(), N_EVAL, steps, full=recipe.training.max_steps)
    recipe = load_recipe(recipe_path, [*overrides, f"training.max_steps={plan.steps}"])
    console.print(f"[bold]plan:[/] {plan.sentence()}", highlight=False)

    console.rule("[bold]3/4 train (LoRA SFT on calls, results masked) and eval on held-out requests")
    run = entry.run(recipe)
    report = evaluate(run)
    table = Table(title=f"{report.n_examples} held-out requests (values never in train)")
    for col in ("metric", "base", "tuned"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, (b, t) in table_rows(report):
        table.add_row(label, f"{b:.0%}", f"{t:.0%}")
    console.print(table)

    console.rule("[bold]4/4 serve the tuned run; a two-step tool loop with the openai client")
    loop = serve_loop(run.dir)
    console.print(f"user> {LOOP_REQUEST}", highlight=False)
    console.print(
        f"call> {json.dumps(loop.call)}\ntool> {json.dumps(loop.result)}\n[bold]tuned>[/] {loop.answer}", highlight=False
    )
    return report, loop, plan


def proof(report: EvalReport, loop: Loop) -> str:
    """The demo's claim in words: base vs tuned on each shown metric, and how the served loop went."""
    parts = [f"{label} {b:.0%} -> {t:.0%}" for label, (b, t) in table_rows(report)]
    served = (
        f"served: called {loop.call['name']}, got the result, answered ({' then '.join(loop.finish_reasons)})"
        if loop.call
        else "served: the model answered without calling"
    )
    return f"On {report.n_examples} held-out requests, base -> tuned: " + "; ".join(parts) + ". " + served + "."
