"""Trackers through transformers' integrations, written under the run folder; metrics.jsonl and loss.png always."""

import pytest

from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError
from tunesmith.run import read_metrics
from tunesmith.train import sft


def test_tensorboard_and_mlflow_write_under_the_run_dir(tiny_recipe, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 3, "report_to": ["tensorboard", "mlflow"]})))

    events = list((run.dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run.dir / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    # transformers ends the MLflow run with training; the final evaluate() after it opens a second one.
    train_runs = [r for r in runs if "loss" in r.data.metrics]
    assert len(train_runs) == 1 and any("eval_loss" in r.data.metrics for r in runs)
    history = mlflow.MlflowClient().get_metric_history(train_runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # nothing in the cwd

    assert [r["step"] for r in read_metrics(run.dir) if "loss" in r] == [1, 2, 3]
    assert (run.dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_tracker_is_a_recipe_error(tiny_recipe):
    with pytest.raises(RecipeError, match="training.report_to"):
        load_recipe(tiny_recipe(training={"report_to": ["wandb"]}))


def test_default_reports_to_no_tracker(tiny_recipe):
    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 1})))
    assert not (run.dir / "tensorboard").exists() and not (run.dir / "mlflow.db").exists()
    assert (run.dir / "metrics.jsonl").exists() and (run.dir / "loss.png").exists()
