"""Run folders for the studio's tests and page benchmark: typed records written as `train` and `eval` write them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from tunesmith.records import (
    BaseModelRef,
    EvalReport,
    Figures,
    Judgement,
    Manifest,
    write_eval_report,
    write_manifest,
)


def fake_run(
    root: Path, name: str, n_examples: int = 6, seed: int = 0, finished: bool = True, data_file: Path | None = None
) -> Path:
    """A run folder with run.yaml, metrics.jsonl and (when finished) manifest.json and an eval report of n_examples."""
    rng = random.Random(seed)
    run_dir = root / name
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    data = str(data_file or run_dir / "train.jsonl")
    recipe = {
        "name": name,
        "method": "sft",
        "model": {"base": "tiny"},
        "data": {"train": [data]},
        "adapter": {"type": "lora"},
        "output_dir": str(run_dir),
    }
    (run_dir / "run.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    metrics = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4} for s in range(1, 11)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    if not finished:
        return run_dir
    write_manifest(
        run_dir / "manifest.json",
        Manifest(
            run=name,
            method="sft",
            adapter="lora",
            base_model=BaseModelRef(spec="tiny", path="/models/tiny"),
            chat_template_sha256="ab" * 32,
            data={data: "cd" * 32},
            figures=Figures(global_step=10, train_loss=0.2),
        ),
    )
    rows, wins, losses = [], 0, 0
    for i in range(n_examples):
        base_ok, tuned_ok = rng.random() < 0.4, rng.random() < 0.7
        judgement = "win" if tuned_ok > base_ok else "loss" if base_ok > tuned_ok else "tie"
        wins, losses = wins + (judgement == "win"), losses + (judgement == "loss")
        rows.append(
            {
                "id": f"ex{i}",
                "prompt": f"Add {i} and {i + 1}.",
                "reference": json.dumps({"sum": 2 * i + 1}),
                "base": json.dumps({"sum": 2 * i + 1 if base_ok else 0}),
                "tuned": json.dumps({"sum": 2 * i + 1 if tuned_ok else 7}),
                "base_metrics": {"exact_match": float(base_ok), "json_valid": 1.0},
                "tuned_metrics": {"exact_match": float(tuned_ok), "json_valid": 1.0},
                "judgement": judgement,
            }
        )
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    mean = {side: sum(r[f"{side}_metrics"]["exact_match"] for r in rows) / max(1, n_examples) for side in ("base", "tuned")}
    summary = {
        "base": {"exact_match": mean["base"], "json_valid": 1.0},
        "tuned": {"exact_match": mean["tuned"], "json_valid": 1.0},
    }
    summary["delta"] = {k: summary["tuned"][k] - summary["base"][k] for k in summary["base"]}
    write_eval_report(
        run_dir / "eval" / "report.json",
        EvalReport(
            run=name,
            base_model="tiny",
            n_examples=n_examples,
            json_mode=True,
            summary=summary,
            judgement=Judgement(wins=wins, losses=losses, ties=n_examples - wins - losses, win_rate=wins / max(1, n_examples)),
            chat_template_sha256="ab" * 32,
            gates=[{"name": "exact_match", "rule": ">= base", "value": mean["tuned"], "status": "pass"}],
        ),
    )
    return run_dir


ORIGIN = "http://127.0.0.1:7860"  # where StudioConfig listens by default


class StudioClient(TestClient):
    """A client on the studio's own origin that sends the page's CSRF token with each state change, as the studio's
    pages do (a request given its own X-CSRF-Token header is sent as it is)."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, base_url=ORIGIN, **kwargs)

    def csrf(self) -> str:
        """The token the studio put in this session's pages."""
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', self.get("/monitor").text)
        return found.group(1) if found else ""

    def request(self, method, url, **kwargs):  # type: ignore[override]
        headers = dict(kwargs.pop("headers", None) or {})
        if method.upper() not in ("GET", "HEAD", "OPTIONS") and not any(h.lower() == "x-csrf-token" for h in headers):
            headers["X-CSRF-Token"] = self.csrf()
        return super().request(method, url, headers=headers, **kwargs)


def fake_sweep(root: Path, name: str, values: list[float | None]) -> Path:
    """A sweep folder as `tunesmith sweep` writes it: sweep.json, results.json, the table, the chart, one fake run per
    trial under trials/ (None: a trial skipped for the budget)."""
    from tunesmith.sweep import report
    from tunesmith.sweep.spec import SPEC, SweepSpec, points

    folder = root / name
    folder.mkdir(parents=True)
    recipe = folder.parent / f"{name}-recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"base": "tiny"}, "data": {"train": ["train.jsonl"]}}), encoding="utf-8")
    grid = {"training.learning_rate": [1e-4, 2e-4], "adapter.r": [8, 16]}
    spec = SweepSpec(
        recipe=str(recipe), recipe_sha256="0" * 64, grid=grid, metric="exact_match", higher_is_better=True, budget_s=3600
    )
    (folder / SPEC).write_text(spec.model_dump_json(), encoding="utf-8")
    trials = []
    for i, (point, value) in enumerate(zip(points(grid), values, strict=True)):
        if value is None:
            trials.append(report.TrialResult(trial=i, params=point, status="skipped", reason="needs ~2.0 h; 10 min left"))
            continue
        run = fake_run(folder / "trials", f"trial-{i:02d}", seed=i)
        trials.append(
            report.TrialResult(
                trial=i, params=point, status="complete", value=value, seconds=60.0 * (i + 1), gates_checked=1, run_dir=str(run)
            )
        )
    winner, passes = report.choose(trials, True)
    done = report.SweepReport(
        spec=spec, trials=trials, winner=winner, winner_passes_gates=passes, used_s=600.0, hardware="CPU test"
    )
    report.write(folder, done, points(grid))
    return folder
