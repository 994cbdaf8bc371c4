"""`tunesmith eval` of a reward run: pairwise accuracy and calibration on its held-out preference pairs.

Definitions (one place; docs/methods.md repeats them):
- margin of a pair = score(chosen) - score(rejected), the reward model's scores (tunesmith.eval.reward_model);
- pairwise_accuracy = share of pairs with margin > 0 (a margin of exactly 0 counts one half);
- reward_margin = mean margin;
- calibration: the probability the model assigns to "chosen is preferred" is sigmoid(margin) (the Bradley-Terry
  model its loss trains). Its confidence is max(p, 1 - p) in [0.5, 1], i.e. a function of |margin| alone. Pairs are
  put in five buckets of confidence [0.5, 0.6), [0.6, 0.7), [0.7, 0.8), [0.8, 0.9), [0.9, 1.0] (|margin| below
  0.41, 0.85, 1.39, 2.20, and above); each bucket's accuracy is the share of its pairs ranked the right way.
  calibration_error is the expected calibration error, sum over buckets of (pairs in it / all pairs) x
  |accuracy - mean confidence| (0 = perfectly calibrated; a model that is right 60 % of the time when it says 90 %
  has a large one).

Base vs tuned, as for every method: "base" is the same model with the adapter disabled, i.e. the untrained score head
on the base model (about chance); "tuned" is the reward model. Writes eval/report.json, predictions.jsonl,
report.html and calibration.json (the reliability table of each side).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field

from tunesmith import models
from tunesmith.errors import RunError
from tunesmith.eval import gates
from tunesmith.eval.reward_model import RewardModel
from tunesmith.records import EvalReport, GateResult, Judgement, Record, read_record
from tunesmith.run import changed_inputs, read_metrics
from tunesmith.train.rows import pair_tools

CALIBRATION_NAME = "calibration.json"
EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SIDES = ("base", "tuned")


class Bucket(Record):
    """One row of the reliability table: the pairs whose confidence lies in [low, high)."""

    low: float
    high: float
    min_margin: float = Field(..., description="|margin| where the bucket starts: logit(low).")
    pairs: int
    confidence: float | None = Field(None, description="Mean confidence (max(p, 1 - p), p = sigmoid(margin)).")
    accuracy: float | None = Field(None, description="Share of the bucket's pairs ranked the right way.")


class Calibration(Record):
    """eval/calibration.json of a reward run: per side, the reliability table and the expected calibration error."""

    schema_version: int = 1
    pairs: int
    tables: dict[str, list[Bucket]]
    calibration_error: dict[str, float]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def pairwise(margins: list[float]) -> dict[str, float]:
    """pairwise_accuracy and reward_margin of a list of margins (chosen - rejected)."""
    if not margins:
        return {}
    right = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    return {"pairwise_accuracy": right / len(margins), "reward_margin": sum(margins) / len(margins)}


def reliability(margins: list[float]) -> tuple[list[Bucket], float]:
    """The reliability table over the confidence buckets, and the expected calibration error."""
    buckets: list[Bucket] = []
    ece = 0.0
    for i, (low, high) in enumerate(zip(EDGES, EDGES[1:])):
        last = i == len(EDGES) - 2
        inside = [m for m in margins if low <= _sigmoid(abs(m)) < high or (last and _sigmoid(abs(m)) >= high)]
        bucket = Bucket(low=low, high=high, min_margin=round(math.log(low / (1 - low)), 3), pairs=len(inside))
        if inside:
            conf = sum(_sigmoid(abs(m)) for m in inside) / len(inside)
            acc = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in inside) / len(inside)
            bucket.confidence, bucket.accuracy = conf, acc
            ece += len(inside) / len(margins) * abs(acc - conf)
        buckets.append(bucket)
    return buckets, ece


def read_pairs(run: Any) -> list[dict[str, Any]]:
    """The held-out pairs saved with a reward run (RUN/data/eval_pairs.jsonl)."""
    path = Path(run.dir) / run.manifest.details.pairs
    if not path.is_file():
        raise RunError(f"{path} is missing: the reward run's held-out pairs were removed", hint="Restore the run folder.")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _judge(base: list[float], tuned: list[float]) -> Judgement:
    """A pair is a win when the reward model ranks it right and the untrained head does not."""
    wins = sum(t > 0 >= b for b, t in zip(base, tuned))
    losses = sum(b > 0 >= t for b, t in zip(base, tuned))
    n = len(tuned)
    return Judgement(wins=wins, losses=losses, ties=n - wins - losses, win_rate=wins / n if n else 0.0)


def _beats_base(summary: dict[str, dict[str, float]]) -> GateResult:
    delta = summary["tuned"]["pairwise_accuracy"] - summary["base"]["pairwise_accuracy"]
    return GateResult(
        name="beats_base",
        rule="tuned pairwise_accuracy > base",
        value=delta,
        status="pass" if delta > 1e-9 else "fail",
        detail=f"pairwise_accuracy delta {delta:+.4f}",
    )


def evaluate_pairs(run: Any, max_examples: int | None = None, progress: Any = None) -> EvalReport:
    """Score every held-out pair with the untrained head and the reward model; write the eval folder."""
    from tunesmith.eval.compare import write_outputs

    pairs = read_pairs(run)
    limit = max_examples if max_examples is not None else run.recipe.eval.max_examples
    pairs = pairs[:limit] if limit else pairs
    model = RewardModel.load(run.dir)
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    tools = [pair_tools(p) for p in pairs] * 2  # each pair with the tools its prompt offered, as it was trained
    batch = run.recipe.eval.batch_size
    scores: dict[str, list[float]] = {}
    with model.base():
        scores["base"] = model.score(prompts, answers, batch, tools)
    scores["tuned"] = model.score(prompts, answers, batch, tools)
    n = len(pairs)
    margins = {side: [c - r for c, r in zip(s[:n], s[n:])] for side, s in scores.items()}
    tables, ece, summary = {}, {}, {}
    for side in SIDES:
        tables[side], ece[side] = reliability(margins[side])
        summary[side] = {**pairwise(margins[side]), "calibration_error": ece[side]}
    summary["delta"] = {k: summary["tuned"][k] - summary["base"][k] for k in summary["tuned"]}
    changed = changed_inputs(run)
    report = EvalReport(
        run=run.recipe.name,
        base_model=run.recipe.model.base,
        n_examples=n,
        json_mode=False,
        reference="held-out preference pairs: the chosen answer should score above the rejected one",
        summary=summary,
        judgement=_judge(margins["base"], margins["tuned"]),
        chat_template_sha256=models.chat_template_hash(model.tokenizer),
        warnings=list(changed),
        generation={"scored": "preference pairs (no generation)", "batch_size": batch},
    )
    report.extra.changed_inputs = changed
    history = read_metrics(run.dir)
    section = run.recipe.eval
    if section.gates or section.graders:
        checks = {
            "inputs_unchanged": lambda: gates.inputs_unchanged(report),
            "loss_converged": lambda: gates.loss_converged(history),
        }
        checks["beats_base"] = lambda: _beats_base(summary)
        report.gates = [checks[name]() for name in section.checks] + gates.check_rules(section.gates, summary["tuned"])
    rows = [
        {
            "id": p["id"],
            "prompt": p["prompt"][-1]["content"] if p["prompt"] else "",
            "reference": p["chosen"][-1]["content"] if p["chosen"] else "",
            "rejected": p["rejected"][-1]["content"] if p["rejected"] else "",
            **{side: f"chosen {scores[side][i]:+.3f} vs rejected {scores[side][n + i]:+.3f}" for side in SIDES},
            **{f"{side}_metrics": {"margin": margins[side][i], **pairwise([margins[side][i]])} for side in SIDES},
        }
        for i, p in enumerate(pairs)
    ]
    calibration = Calibration(pairs=n, tables=tables, calibration_error=ece)
    write_outputs(run.dir / "eval", report, rows, history, {CALIBRATION_NAME: calibration.model_dump_json(indent=1) + "\n"})
    return report


def read_calibration(run_dir: str | Path) -> Calibration:
    """A reward run's eval/calibration.json; RunError when missing, malformed or newer than this code."""
    return read_record(Path(run_dir) / "eval" / CALIBRATION_NAME, Calibration, 1)
