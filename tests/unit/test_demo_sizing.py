"""The demo sizes its work to the machine it runs on (demo/sizing.py), from the planner's estimate in the precision
that machine trains in: under budget on a CPU with bf16 units and on the simulated AVX2 class, said up front where the
estimate cannot fit."""

from __future__ import annotations

import json

import pytest

from tunesmith.demo import sizing

# SmolLM2-135M's shape (its config.json fields), without weights: the planner reads the config only.
SMOLLM2 = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
# The demo's rows as trained with retrieval: 400 rows of ~280 tokens, ~30% of them the trained answer.
LENGTHS, TRAINED = [280] * 400, 0.3


@pytest.fixture
def demo_recipe(tmp_path):
    from tunesmith.config import recipe_from_dict
    from tunesmith.demo.pipeline import demo_recipe_values

    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "config.json").write_text(json.dumps(SMOLLM2))
    values = demo_recipe_values()
    values["model"]["base"] = str(tmp_path / "smollm2")
    values.pop("rag")  # the index is not built here; the lengths above are those of the rows with their context
    return recipe_from_dict(values, tmp_path, check_files=False)


def machine(monkeypatch, units: bool, fp32: float, bf16: float) -> list[str]:
    """Mock the CPU: its flags (bf16 units or an AVX2-only CPU) and its measured matmul rates; returns the probes made."""
    from tunesmith.train import hardware

    flags = {"avx2", "fma", "avx512f", "avx512_bf16"} if units else {"avx2", "fma"}
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("test CPU", frozenset(flags)))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    probed: list[str] = []

    def gemm(dtype="float32", **kw):
        probed.append(dtype)
        return {"float32": fp32, "bfloat16": bf16}[dtype]

    monkeypatch.setattr(hardware, "gemm_gflops", gemm)
    return probed


@pytest.mark.parametrize(
    ("units", "fp32", "bf16", "fits"),
    [
        (True, 215.0, 980.0, True),  # the benchmark CPU: AVX512-BF16, bf16 matmuls 4.6x fp32
        # the same CPU capped at AVX2 (the simulated class): bf16 emulated at 0.4 GFLOP/s, fp32 at its own rate
        (False, 215.0, 0.4, True),
        # an AVX2 CPU with half that fp32 rate: cut (early stop, 20 prompts, fewer steps) to fit
        (False, 110.0, 0.4, True),
        # one with 60 GFLOP/s: the planner's estimate does not fit even the smallest demo
        (False, 60.0, 0.4, False),
    ],
    ids=["bf16-units", "avx2-simulated", "avx2-half-rate", "avx2-slow"],
)
def test_the_demo_plan_follows_the_planner_with_and_without_bf16_units(monkeypatch, demo_recipe, units, fp32, bf16, fits):
    """The plan's training time is the planner's estimate in the precision this CPU trains in (fp32 without bf16
    units, never the emulated bf16 rate); the demo is sized to fit its budget, and says so up front when it cannot."""
    from tunesmith.plan import advisor

    probed = machine(monkeypatch, units, fp32, bf16)
    plan = sizing.measure(demo_recipe, sizing.BUDGET_S, lengths=LENGTHS, trained=TRAINED)
    assert plan.precision == ("bf16" if units else "fp32")
    assert plan.gflops == (bf16 if units else fp32)  # training's rate in its own precision, never the emulated one
    assert ("bfloat16" in probed) is units
    estimate = advisor.plan(demo_recipe, gpu="cpu", lengths=LENGTHS, trained=TRAINED)
    assert plan.train_s == pytest.approx(estimate.seconds / estimate.steps * plan.steps)  # the planner's seconds
    assert plan.fits is fits and (plan.total_s <= sizing.BUDGET_S) is fits
    assert sizing.MIN_STEPS <= plan.steps <= sizing.STEPS and plan.prompts >= sizing.MIN_PROMPTS
    said = plan.sentence()
    assert ("no bf16 units" in said) is not units
    assert f"{plan.steps} training steps" in said and f"about {plan.total_s / 60:.0f} min" in said
    assert ("over the 15-minute budget" in said) is not fits
    if not fits:  # everything that can be cut was cut before saying so
        assert (plan.steps, plan.prompts, plan.stop_early) == (sizing.MIN_STEPS, sizing.MIN_PROMPTS, True)
    if fp32 == 110.0:  # the slower fp32 CPU gets a cut demo, not the full one over budget
        assert plan.stop_early and plan.steps < sizing.STEPS


def test_the_time_sizing_takes_is_spent_from_the_budget(monkeypatch, demo_recipe):
    """Tokenizing the data and probing the matmul take time of their own (about a minute on a busy machine): the plan
    is sized for what is left of the budget after them."""
    from tunesmith.train import hardware

    machine(monkeypatch, False, 215.0, 0.4)
    clock = [1000.0]
    monkeypatch.setattr(sizing.time, "time", lambda: clock[0])

    def slow_probe(dtype="float32", **kw):
        clock[0] += 120.0  # the probe and the tokenization, as a busy machine takes them
        return 215.0

    monkeypatch.setattr(hardware, "gemm_gflops", slow_probe)
    plan = sizing.measure(demo_recipe, sizing.BUDGET_S, lengths=LENGTHS, trained=TRAINED)
    assert plan.budget_s == pytest.approx(sizing.BUDGET_S - 120.0)
    assert plan.total_s <= plan.budget_s  # cut to fit the shorter budget, not the full 15 minutes


def test_sizing_cuts_the_least_claim_changing_work_first():
    """Full size when it fits; then rungs that cannot pass stop early; then 20 prompts; then fewer steps; and a
    machine too slow even for the smallest demo gets that, said to be over budget."""
    rungs = ("base", "base_few_shot", "base_rag", "tuned", "tuned_rag")

    def size(step_s, budget=900.0):
        return sizing.size(step_s, budget, rungs, 134_515_008, 100.0, "fp32", 100.0)

    full, stopped, fewer = size(5.0), size(11.0), size(14.0)
    assert (full.steps, full.prompts, full.stop_early) == (60, 24, False) and full.fits
    assert (stopped.steps, stopped.prompts, stopped.stop_early) == (60, 24, True) and stopped.fits
    assert fewer.stop_early and fewer.prompts == 20 and sizing.MIN_STEPS <= fewer.steps < 60 and fewer.fits
    assert full.ladder_s > stopped.ladder_s > fewer.ladder_s
    slow = size(40.0)
    assert slow.steps == sizing.MIN_STEPS and not slow.fits and "over the 15-minute budget" in slow.sentence()
    kept = sizing.size(40.0, 900.0, rungs, 134_515_008, 100.0, "fp32", 100.0, steps=10)
    assert kept.steps == 10  # --steps is the user's: kept


def test_the_demo_says_its_plan_before_training_and_trains_that_size(monkeypatch, tmp_path):
    """`tunesmith demo` prints the plan (what it will take on this CPU) before training starts, trains the planned
    steps, asks the ladder for the planned prompts, and is sized for the time left before its deadline."""
    import time

    from rich.console import Console

    import tunesmith.models
    import tunesmith.rag.index
    import tunesmith.train.entry
    from tunesmith.demo import pipeline

    rungs = ("base", "base_few_shot", "base_rag", "tuned", "tuned_rag")
    plan = sizing.size(13.0, 900.0, rungs, 134_515_008, 150.0, "fp32", 150.0, cpu="test CPU")
    assert (plan.steps, plan.prompts) != (sizing.STEPS, sizing.PROMPTS)  # a cut plan, so the overrides show
    monkeypatch.setattr(tunesmith.models, "pull", lambda name: tmp_path / "base")
    monkeypatch.setattr(tunesmith.rag.index, "build_index", lambda sources, out: out.mkdir(parents=True, exist_ok=True))
    asked: list[float] = []

    def measure(recipe, budget_s, steps=None):
        asked.append(budget_s)
        return plan

    monkeypatch.setattr(sizing, "measure", measure)
    console = Console(record=True, width=400)
    seen = {}

    class Trained(Exception):
        pass

    def train(recipe):
        seen.update(steps=recipe.training.max_steps, prompts=recipe.ladder.max_examples, said=console.export_text())
        raise Trained

    monkeypatch.setattr(tunesmith.train.entry, "run", train)
    (tmp_path / "demo").mkdir()
    with pytest.raises(Trained):
        pipeline._demo_steps(tmp_path / "demo", console, None, time.time() + 600)
    assert f"plan: {plan.sentence()}" in " ".join(seen["said"].split())
    assert (seen["steps"], seen["prompts"]) == (plan.steps, plan.prompts)
    assert len(asked) == 1 and 500 < asked[0] <= 600  # the seconds left before the deadline, not the full 15 minutes


@pytest.fixture
def tools_recipe(tmp_path):
    from tunesmith.config import recipe_from_dict
    from tunesmith.demo.tools_pipeline import recipe_values

    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "config.json").write_text(json.dumps(SMOLLM2))
    return recipe_from_dict(recipe_values(str(tmp_path / "smollm2")), tmp_path, check_files=False)


# The tools demo's rows: 240 of ~420 tokens, the first ~300 (system prompt and tool list) the same in every row.
TOOL_LENGTHS, TOOL_TRAINED, TOOL_SHARED = [420] * 240, 0.1, 300


@pytest.mark.parametrize(
    ("units", "fp32", "bf16", "cut", "fits"),
    [
        (True, 215.0, 980.0, False, True),  # the benchmark CPU: the full 60 steps
        (False, 215.0, 0.4, False, True),  # the same CPU capped at AVX2, training in fp32: still the full 60 steps
        (False, 110.0, 0.4, True, True),  # an AVX2 CPU at half that fp32 rate: fewer steps, inside 10 minutes
        (False, 40.0, 0.4, True, False),  # far too slow: the smallest demo, said to be over budget up front
    ],
    ids=["bf16-units", "avx2-simulated", "avx2-half-rate", "avx2-too-slow"],
)
def test_the_tools_demo_is_sized_from_the_planner_too(monkeypatch, tools_recipe, units, fp32, bf16, cut, fits):
    """`tunesmith demo --task tools` trains as many of its 60 steps as the planner says fit 10 minutes after the
    base-vs-tuned comparison and the served loop, in the precision this CPU trains in; never fewer than
    TOOLS_MIN_STEPS, and a machine too slow for that is told so before training."""
    from tunesmith.plan import advisor

    machine(monkeypatch, units, fp32, bf16)
    m = sizing.estimate(tools_recipe, lengths=TOOL_LENGTHS, trained=TOOL_TRAINED, shared=TOOL_SHARED)
    p = advisor.plan(tools_recipe, gpu="cpu", lengths=TOOL_LENGTHS, trained=TOOL_TRAINED, shared=TOOL_SHARED)
    assert m.step_s == pytest.approx(p.seconds / p.steps) and m.precision == ("bf16" if units else "fp32")
    plan = sizing.size_tools(m, sizing.TOOLS_BUDGET_S, 24, full=60)
    assert (plan.steps < 60) is cut and plan.fits is fits
    assert sizing.TOOLS_MIN_STEPS <= plan.steps <= 60 and plan.train_s == pytest.approx(plan.steps * m.step_s)
    if fits and cut:  # the most steps that fit: one more would not
        assert plan.total_s + m.step_s > plan.budget_s
    said = plan.sentence()
    assert f"{plan.steps} training steps" in said and "24 held-out requests" in said
    assert ("over the 10-minute budget" in said) is not fits and ("no bf16 units" in said) is not units
    assert sizing.size_tools(m, sizing.TOOLS_BUDGET_S, 24, steps=7).steps == 7  # --steps is the user's: kept


def test_the_planner_counts_the_prefix_every_row_shares_once_per_pass(monkeypatch, tools_recipe):
    """The planner's CPU estimate runs the leading tokens every row has (the tool list) once per pass, as
    speed.shared_prefix trains them, and a pass holds as many rows as their own tokens allow
    (speed.micro_batch_tokens); `tunesmith plan` reads that prefix from the tokenized rows."""
    from tunesmith.plan import advisor

    machine(monkeypatch, False, 215.0, 0.4)

    alone = advisor.plan(tools_recipe, gpu="cpu", lengths=TOOL_LENGTHS, trained=TOOL_TRAINED)
    shared = advisor.plan(tools_recipe, gpu="cpu", lengths=TOOL_LENGTHS, trained=TOOL_TRAINED, shared=TOOL_SHARED)
    assert shared.seconds < 0.75 * alone.seconds
    assert (alone.micro_batch, shared.micro_batch) == (1, 4)  # 4 rows' own 120 tokens fit 512; 4 whole rows do not
    off = tools_recipe.model_copy(update={"speed": tools_recipe.speed.model_copy(update={"shared_prefix": False})})
    assert advisor.plan(off, gpu="cpu", lengths=TOOL_LENGTHS, trained=TOOL_TRAINED, shared=TOOL_SHARED).seconds == (
        pytest.approx(alone.seconds)
    )


def test_data_shape_finds_the_shared_prefix_of_the_tokenized_rows(tmp_path):
    """The rows as training tokenizes them: their lengths, the trained share, and the leading tokens all of them
    have, which is the system prompt and the tool list (not a whole row)."""
    from tool_helpers import tiny_tool_model
    from tunesmith import models
    from tunesmith.config import recipe_from_dict
    from tunesmith.demo import tools_task
    from tunesmith.demo.tools_pipeline import recipe_values
    from tunesmith.plan import advisor

    base = tiny_tool_model(tmp_path / "tiny")
    tools_task.write_splits(tmp_path / "data", 12, 4)
    values = recipe_values(str(base))
    values["data"]["max_length"] = 4096  # the tiny tokenizer spends a token on almost every character
    recipe = recipe_from_dict(values, tmp_path, check_files=False)
    tok = models.load_tokenizer(base)
    lengths, trained, shared = advisor.data_shape(recipe, tok)
    assert len(lengths) == 12 and 0 < trained < 1
    system = tok.apply_chat_template(
        [{"role": "system", "content": tools_task.SYSTEM}, {"role": "user", "content": "x"}],
        tools=tools_task.TOOLS,
        tokenize=True,
    )
    assert 0.5 * len(system) < shared < min(lengths)
