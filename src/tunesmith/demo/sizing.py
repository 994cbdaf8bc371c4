"""How much a demo does on this machine: training steps, ladder prompts and how its rungs run, sized from the
planner's time estimate so that `make demo` (15 minutes) and `tunesmith demo --task tools` (10 minutes) stay inside
their budgets on any 2-core x86 CPU, with bf16 units or without.

Training time is the planner's (tunesmith.plan: trained tokens x FLOPs per token / the matmul rate measured now in the
precision training will use, fp32 where the CPU has no bf16 units). The ladder and the rest (index, model loads, the
loss evaluation, merge, chat) run in fp32 on every CPU and are estimated from their FLOPs at the measured fp32 rate.
The demo prints the plan before it starts and the measured time at the end.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith import models
from tunesmith.eval.ladder import PROBE_ROWS
from tunesmith.plan import advisor
from tunesmith.train import hardware

if TYPE_CHECKING:
    from tunesmith.config import Recipe

BUDGET_S = 900.0  # `make demo`, start to end: 15 minutes
STEPS, PROMPTS = 60, 24  # the demo at full size (README): 60 steps of 4 rows, 24 held-out prompts per rung
MIN_STEPS, MIN_PROMPTS = 40, 20  # below these its claims are not measured (20 prompts: one miss still passes 0.95)
# Mean prompt tokens per request by rung on the demo's held-out prompts (README's ladder table) and the completion
# tokens a request costs (the base rungs often run to the 80-token budget; tuned answers end at ~72).
PROMPT_TOKENS = {"base": 160, "base_few_shot": 486, "base_rag": 203, "tuned": 160, "tuned_rag": 203, "student": 160}
COMPLETION_TOKENS = 76
# Generation's share of the fp32 matmul rate: the five rungs' 10.1 TFLOP of the README's ladder took 71.5 s at a
# measured 215 GFLOP/s (0.66).
GENERATION_EFFICIENCY = 0.66
# The demo's other steps: ~45 s that do not scale with the matmul rate (imports, the catalog index, retrieval for
# 460 rows, saving the merged model) and ~6 TFLOP of fp32 work (the loss evaluation of training, the merge check's
# greedy answers, chat) on the benchmark CPU (README: 312 s for the demo's steps, 167 s training, 72 s ladder).
OTHER_FIXED_S, OTHER_TFLOP = 45.0, 6.0


class _Budgeted(ABC):
    """A demo's estimated seconds against its budget: `parts` are the seconds of its steps."""

    budget_s: float

    @property
    @abstractmethod
    def parts(self) -> tuple[float, ...]:
        """Estimated seconds of each of the demo's steps."""

    @property
    def total_s(self) -> float:
        return sum(self.parts)

    @property
    def fits(self) -> bool:
        return self.total_s <= self.budget_s

    def over(self) -> str:
        """What the sentence adds when even the smallest demo does not fit."""
        return "" if self.fits else f"; over the {self.budget_s / 60:.0f}-minute budget even at the smallest size"


@dataclass(frozen=True)
class DemoPlan(_Budgeted):
    """The demo's work and its estimated seconds on this machine."""

    steps: int
    prompts: int
    rungs: tuple[str, ...]
    stop_early: bool  # rungs that cannot pass stop after PROBE_ROWS prompts once tuned + RAG passes (eval.ladder)
    train_s: float
    ladder_s: float
    other_s: float
    budget_s: float
    precision: str  # what training multiplies in: bf16 or fp32
    gflops: float  # the measured matmul rate in that precision
    fp32_gflops: float
    cpu: str

    @property
    def parts(self) -> tuple[float, ...]:
        return (self.train_s, self.ladder_s, self.other_s)

    def sentence(self) -> str:
        """What the demo will take, said before it starts."""
        ladder = f"{len(self.rungs)} rungs x {self.prompts} held-out prompts"
        if self.stop_early:
            ladder += f" (a rung that cannot pass the gates stops after {PROBE_ROWS})"
        over = self.over()
        return (
            f"about {self.total_s / 60:.0f} min on this CPU ({_machine(self.cpu, self.precision, self.gflops)}): "
            f"{self.steps} training steps ~{self.train_s / 60:.1f} min, the ladder ({ladder}) "
            f"~{self.ladder_s / 60:.1f} min, the rest ~{self.other_s / 60:.1f} min{over}"
        )


def generation_seconds(requests: int, tokens: int, params: int, fp32_gflops: float) -> float:
    """Seconds to answer `requests` requests of `tokens` prompt + completion tokens each: 2N FLOPs per token at
    GENERATION_EFFICIENCY of the fp32 rate (every CPU generates in fp32)."""
    return requests * tokens * 2 * params / (fp32_gflops * 1e9 * GENERATION_EFFICIENCY)


def ladder_seconds(rungs: tuple[str, ...], prompts: int, stop_early: bool, params: int, fp32_gflops: float) -> float:
    """Generation seconds of the ladder. With stop_early, tuned + RAG answers every prompt and the others PROBE_ROWS
    (they miss the demo's gates)."""
    total = 0.0
    for rung in rungs:
        n = prompts if not stop_early or rung == "tuned_rag" else min(prompts, PROBE_ROWS)
        total += generation_seconds(n, PROMPT_TOKENS.get(rung, 200) + COMPLETION_TOKENS, params, fp32_gflops)
    return total


def size(
    seconds_per_step: float,
    budget_s: float,
    rungs: tuple[str, ...],
    params: int,
    fp32_gflops: float,
    precision: str,
    gflops: float,
    cpu: str = "this CPU",
    steps: int | None = None,
) -> DemoPlan:
    """The largest demo that fits `budget_s`, least claim-changing cut first: the full ladder; then rungs that cannot
    pass stopping early; then 20 prompts; then fewer training steps, down to MIN_STEPS. `steps` given: kept as is."""
    other = OTHER_FIXED_S + OTHER_TFLOP * 1e12 / (fp32_gflops * 1e9 * GENERATION_EFFICIENCY)

    def plan(n_steps: int, prompts: int, stop: bool) -> DemoPlan:
        ladder = ladder_seconds(rungs, prompts, stop, params, fp32_gflops)
        return DemoPlan(
            n_steps,
            prompts,
            rungs,
            stop,
            n_steps * seconds_per_step,
            ladder,
            other,
            budget_s,
            precision,
            gflops,
            fp32_gflops,
            cpu,
        )

    fixed = steps or STEPS
    for candidate in (plan(fixed, PROMPTS, False), plan(fixed, PROMPTS, True), plan(fixed, MIN_PROMPTS, True)):
        if candidate.fits:
            return candidate
    smallest = plan(fixed, MIN_PROMPTS, True)
    if steps is not None:
        return smallest
    room = budget_s - smallest.ladder_s - smallest.other_s
    return plan(max(MIN_STEPS, min(STEPS, int(room // seconds_per_step))), MIN_PROMPTS, True)


@dataclass(frozen=True)
class Machine:
    """The planner's estimate of one training step of a recipe on this machine, and the matmul rates behind it."""

    step_s: float
    params: int
    fp32_gflops: float
    precision: str  # what training multiplies in: bf16 or fp32
    gflops: float  # the measured matmul rate in that precision
    cpu: str


def _machine(cpu: str, precision: str, gflops: float) -> str:
    units = "bf16 units" if precision == "bf16" else "no bf16 units: training in fp32"
    return f"{cpu}, {units}, {gflops:.0f} GFLOP/s measured"


def estimate(
    recipe: Recipe,
    tokenizer: Any = None,
    lengths: list[int] | None = None,
    trained: float | None = None,
    shared: int = 0,
) -> Machine:
    """The planner's seconds per training step of `recipe` here (its data tokenized as training will, unless
    `lengths`/`trained`/`shared` are given), in the precision this CPU trains in, and the measured matmul rates."""
    if lengths is None or trained is None:
        tokenizer = tokenizer or models.load_tokenizer(models.resolve_base(recipe.model.base))
        lengths, trained, shared = advisor.data_shape(recipe, tokenizer)
    p = advisor.plan(recipe, gpu="cpu", lengths=lengths, trained=trained, shared=shared)
    fp32 = p.device_tflops * 1e3 if p.precision == "fp32" else hardware.gemm_gflops("float32")
    return Machine(p.seconds / max(p.steps, 1), p.params, fp32, p.precision, p.device_tflops * 1e3, hardware.describe()["cpu"])


def measure(
    recipe: Recipe,
    budget_s: float,
    steps: int | None = None,
    tokenizer: Any = None,
    lengths: list[int] | None = None,
    trained: float | None = None,
    shared: int = 0,
) -> DemoPlan:
    """Size the demo for this machine: the planner's estimate of the recipe's training (its data tokenized as
    training will, unless `lengths`/`trained` are given), the matmul rates measured now, the recipe's rungs.
    budget_s: seconds from this call; the time the estimate itself takes is spent from it."""
    started = time.time()
    m = estimate(recipe, tokenizer, lengths, trained, shared)
    return size(
        m.step_s,
        budget_s - (time.time() - started),
        tuple(recipe.ladder.rungs),
        m.params,
        m.fp32_gflops,
        m.precision,
        m.gflops,
        m.cpu,
        steps,
    )


# `tunesmith demo --task tools`: 10 minutes from the command to the served loop's answer.
TOOLS_BUDGET_S = 600.0
TOOLS_MIN_STEPS = 30  # below this the tuned run's arguments are not measured to beat the base's
# Per held-out request: the tool list, system prompt and request (the shared part is prefilled once per batch, and
# counted here whole: the estimate errs long) and the 64-token answer budget; base and tuned both answer.
TOOLS_PROMPT_TOKENS, TOOLS_COMPLETION_TOKENS = 380, 64
# The rest: imports, three model loads (eval's base and tuned, the server), the server's start and the two-step loop.
TOOLS_FIXED_S = 40.0


@dataclass(frozen=True)
class ToolsPlan(_Budgeted):
    """The tools demo's work and its estimated seconds on this machine."""

    steps: int
    prompts: int
    train_s: float
    eval_s: float
    other_s: float
    budget_s: float
    precision: str
    gflops: float
    cpu: str

    @property
    def parts(self) -> tuple[float, ...]:
        return (self.train_s, self.eval_s, self.other_s)

    def sentence(self) -> str:
        """What the demo will take, said before it starts."""
        over = self.over()
        return (
            f"about {self.total_s / 60:.0f} min on this CPU ({_machine(self.cpu, self.precision, self.gflops)}): "
            f"{self.steps} training steps ~{self.train_s / 60:.1f} min, base vs tuned on {self.prompts} held-out "
            f"requests ~{self.eval_s / 60:.1f} min, the rest (loads, the served loop) ~{self.other_s / 60:.1f} min{over}"
        )


def size_tools(m: Machine, budget_s: float, prompts: int, steps: int | None = None, full: int = STEPS) -> ToolsPlan:
    """The most training steps (up to `full`, down to TOOLS_MIN_STEPS) that fit `budget_s` after the held-out
    comparison and the served loop; `steps` given: kept as is."""
    request = TOOLS_PROMPT_TOKENS + TOOLS_COMPLETION_TOKENS
    eval_s = generation_seconds(2 * prompts, request, m.params, m.fp32_gflops)  # base and tuned
    other = TOOLS_FIXED_S + generation_seconds(2, request, m.params, m.fp32_gflops)  # the served loop's two requests
    if steps is None:
        room = budget_s - eval_s - other
        steps = max(TOOLS_MIN_STEPS, min(full, int(room // m.step_s) if m.step_s > 0 else full))
    return ToolsPlan(steps, prompts, steps * m.step_s, eval_s, other, budget_s, m.precision, m.gflops, m.cpu)
