"""`tunesmith loop`: one cycle of monitor -> feedback export -> screen -> retrain -> gates -> canary on the tiny model,
with the real CLI, a real SQLite request log and real training; served rows matching an eval row never train."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import chat_rows
from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.monitor.contamination import screen
from tunesmith.monitor.loop import LOOP_DIR, LoopOptions, cycle_lock, cycles, parse_every, read_cycle, run_cycle
from tunesmith.serve.rollout import read_rollout, rollout_path
from tunesmith.serve.store import FeedbackRow, Message, RequestLog, RequestRow


def _chat(user: str, answer: str, system: str = "Answer with JSON.") -> dict:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def test_every_takes_durations_and_refuses_the_rest():
    assert parse_every("24h") == 86400 and parse_every("30m") == 1800 and parse_every("7d") == 7 * 86400
    for bad in ("daily", "10s", "5"):
        with pytest.raises(ValueError):
            parse_every(bad)


def test_screening_drops_duplicates_training_rows_and_eval_prompts_and_counts_each():
    long = "please tell me how to reset the router in the living room after the power cut last night"
    pair = "how do I pair my headphones with a new phone over bluetooth when the old one is lost"
    training = [_chat(pair, "Hold the button for five seconds."), _chat("Add 1 and 2.", '{"sum": 3}')]
    evaluation = [_chat("Add 40 and 2.", '{"sum": 42}'), _chat(long, "Unplug it.")]
    new = [
        _chat("Add 1 and 2.", '{"sum": 3}'),  # exactly a training row
        _chat(pair, "Hold the button for five seconds. Thanks."),  # nearly a training row
        _chat("Add 40 and 2.", '{"sum": 41}', system="Be brief."),  # an eval prompt (another answer, another system)
        _chat(long + " please", "Press reset."),  # nearly an eval prompt
        _chat("Add 7 and 8.", '{"sum": 15}'),  # new
        _chat("Add 7 and 8.", '{"sum": 15}'),  # ... twice
        _chat("Add 1 and 2.", '{"sum": 4}'),  # a new answer to a training prompt: new information, kept
    ]
    out = screen(new, training, evaluation)
    assert [r["messages"][1]["content"] for r in out.kept] == ["Add 7 and 8.", "Add 1 and 2."]
    assert dict(out.dropped) == {
        "duplicate within the new rows (exact)": 1,
        "matches an eval row (exact)": 1,
        "matches an eval row (near)": 1,
        "already in the training data (exact)": 1,
        "already in the training data (near)": 1,
    }


def test_screening_drops_training_duplicates():
    training = [_chat("How do I reset my router after a power cut at home", "Hold it.")]
    out = screen([_chat("How do I reset my router after a power cut at home", "Hold it."), _chat("Hi", "Hello")], training, [])
    assert len(out.kept) == 1 and dict(out.dropped) == {"already in the training data (exact)": 1}


@pytest.fixture
def loop_setup(tiny_recipe, tmp_path):
    """A served tiny SFT run behind SERVE_DIR/adapters/tiny and a request log with the served traffic."""
    from tunesmith.serve.server import serve_dir
    from tunesmith.train.entry import run as train_run

    quick = {"max_steps": 2, "save_steps": 2}
    recipe = tiny_recipe(
        data={"eval": None, "eval_fraction": 0.2},  # held out from train.jsonl: the loop keeps those rows held out
        training=quick,
        eval={"gates": {"json_valid": ">=0"}, "checks": ["inputs_unchanged"]},
        monitor={"max_regression": 1.0},
    )
    run = train_run(load_recipe(recipe)).dir
    folder = serve_dir(tmp_path / "serve")
    (folder / "adapters").mkdir()
    (folder / "adapters" / "tiny").symlink_to(run)
    return recipe, run, folder


def _log(folder: Path, rows: list[dict], corrections: dict[int, str], at: datetime | None = None) -> list[str]:
    """Served answers (rows' prompts, a wrong answer each) and corrections of some of them; their request ids."""
    at = at or datetime.now(timezone.utc) - timedelta(minutes=5)
    ids = []
    with RequestLog.open(folder, create=True) as log:
        for i, row in enumerate(rows):
            rid = f"req-{at.timestamp():.0f}-{i}"
            prompt = [Message(**m) for m in row["messages"][:2]]
            log.add_request(RequestRow(request_id=rid, time=at + timedelta(seconds=i), model="tiny", messages=prompt, output="?"))
            if i in corrections:
                log.add_feedback(FeedbackRow(request_id=rid, rating="down", correction=corrections[i]))
            ids.append(rid)
    return ids


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file (its bytes) and link (its target) under the serve folder, the loop's own reports apart, and the
    SQLite shared-memory files any reader of a WAL database opens (the database file itself is compared)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0] == LOOP_DIR or path.name.endswith(("-shm", "-wal")):
            continue
        out[str(rel)] = os.readlink(path) if path.is_symlink() else (path.read_bytes().hex() if path.is_file() else "dir")
    return out


def _once(recipe: Path, folder: Path, *extra: str):
    args = ["loop", str(folder), "--recipe", str(recipe), "--name", "tiny", "--once", "--embedder", "char-ngrams", *extra]
    return CliRunner().invoke(app, args)


def test_a_serve_folder_that_is_not_there_is_refused_and_not_made(loop_setup, tmp_path):
    """A mistyped serve folder: one clear error naming it, and no folder (or cycle report) is created there."""
    recipe, _, _ = loop_setup
    missing = tmp_path / "serv"
    res = _once(recipe, missing)
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"no serve folder at {missing}" in said and "Traceback" not in res.output, said
    assert not missing.exists()


def test_a_cycle_with_nothing_to_learn_changes_nothing(loop_setup):
    """Answers rated without corrections and a correction of an eval prompt: nothing may be learned from them."""
    from tunesmith.run import load_run
    from tunesmith.train.methods import held_out_examples

    recipe, run, folder = loop_setup
    held = held_out_examples(load_run(run))[0].messages
    _log(folder, chat_rows(6, seed=1) + [{"messages": held}], {6: '{"sum": 1}'})
    before, runs_before = _snapshot(folder), sorted(p.name for p in run.parent.iterdir())
    res = _once(recipe, folder)
    assert res.exit_code == 0 and "nothing to learn" in res.output, res.output
    assert _snapshot(folder) == before and sorted(p.name for p in run.parent.iterdir()) == runs_before
    [(stamp, cycle)] = cycles(folder)
    assert cycle.outcome == "nothing_to_learn" and cycle.dropped == {"matches an eval row (exact)": 1} and cycle.added == 0
    page = (folder / LOOP_DIR / stamp / "cycle.html").read_text()
    assert "matches an eval row (exact)" in page and "monitor.html" in page

    # the studio's Monitor page lists the cycle and links its report, and the report its drift report
    from fastapi.testclient import TestClient

    from tunesmith.studio.app import StudioConfig, create_app

    studio = TestClient(create_app(StudioConfig(runs=[run.parent], serve_dir=folder)), base_url="http://127.0.0.1:7860")
    listing = studio.get("/monitor").text
    assert 'id="cycles"' in listing and f"/monitor/cycle?c={stamp}" in listing and "nothing to learn" in listing
    shown = studio.get(f"/monitor/cycle?c={stamp}").text
    assert "matches an eval row (exact)" in shown and f"/monitor/cycle?c={stamp}&page=monitor" in shown
    assert "Monitor:" in studio.get(f"/monitor/cycle?c={stamp}&page=monitor").text
    assert studio.get("/monitor/cycle?c=../../etc&page=cycle").status_code == 404


def test_a_cycle_retrains_on_screened_feedback_then_the_canary_is_decided(loop_setup):
    from tunesmith.run import load_run
    from tunesmith.train.methods import held_out_examples

    recipe, run, folder = loop_setup
    new = [_chat(f"Multiply {a} by {b}.", json.dumps({"product": a * b})) for a, b in ((3, 4), (5, 6), (7, 8), (2, 9))]
    held = held_out_examples(load_run(run))[0].messages
    _log(folder, [*new, {"messages": held}], {i: r["messages"][2]["content"] for i, r in enumerate(new)} | {4: "leak"})
    res = _once(recipe, folder, "--share", "0.5", "--min-requests", "2", "--gate", "live_error_rate=<=0.5")
    assert res.exit_code == 0 and "canary started" in res.output, res.output
    [(_, cycle)] = cycles(folder)
    assert cycle.added == 4 and cycle.dropped == {"matches an eval row (exact)": 1}
    new_run = load_run(cycle.new_run)
    assert new_run.recipe.data.eval == str(run / "data" / "eval.jsonl")  # scored on the served run's held-out rows
    assert cycle.added_file in new_run.recipe.data.train and "leak" not in Path(cycle.added_file).read_text()
    served_held = [e.messages for e in held_out_examples(load_run(run))]
    assert [e.messages for e in held_out_examples(new_run)] == served_held
    trained = [json.loads(x)["messages"] for f in new_run.recipe.data.train for x in Path(f).read_text().splitlines()]
    assert len(trained) == 24 - len(served_held) + 4 and not [m for m in trained if m in served_held]  # none leaked
    r = read_rollout(rollout_path(folder, "tiny"))
    assert r.status == "active" and r.candidate == cycle.new_run and r.share == 0.5
    assert os.path.realpath(folder / "adapters" / "tiny") == str(run)  # nothing promoted before the canary held

    waiting = _once(recipe, folder)  # too few candidate requests yet: no second retrain meanwhile
    assert waiting.exit_code == 0 and "rollout waiting" in waiting.output
    with RequestLog.open(folder, create=True) as log:
        now = datetime.now(timezone.utc)
        for i, variant in enumerate(["primary", "canary", "primary", "canary"]):
            log.add_request(RequestRow(request_id=f"live-{i}", time=now, model="tiny", output="{}", variant=variant))
    done = _once(recipe, folder)
    assert done.exit_code == 0 and "rollout promoted" in done.output, done.output
    assert os.path.realpath(folder / "adapters" / "tiny") == cycle.new_run
    assert len(list(run.parent.iterdir())) == 2  # one new run: the decided cycles trained nothing

    again = _once(recipe, folder)  # the same feedback again: tried already (and now in the training data)
    assert again.exit_code == 0 and "nothing to learn" in again.output, again.output
    last = read_cycle(sorted((folder / LOOP_DIR).glob("*/cycle.json"))[-1])
    assert last.dropped == {"tried by an earlier cycle": 4, "matches an eval row (exact)": 1}

    # a cycle on top of the promoted run: the first run's held-out rows stay held out (and out of training)
    more = [_chat(f"Divide {a * 7} by 7.", json.dumps({"quotient": a})) for a in (3, 5, 9)]
    _log(folder, more, {i: r["messages"][2]["content"] for i, r in enumerate(more)}, at=datetime.now(timezone.utc))
    second = _once(recipe, folder, "--share", "0")  # share 0: promoted at once when the gates pass
    assert second.exit_code == 0 and "promoted" in second.output, second.output
    third = load_run(os.path.realpath(folder / "adapters" / "tiny"))
    assert third.dir.name == "tiny-r3" and [e.messages for e in held_out_examples(third)] == served_held
    trained = [json.loads(x)["messages"] for f in third.recipe.data.train for x in Path(f).read_text().splitlines()]
    assert len(trained) == 24 - len(served_held) + 4 + 3 and not [m for m in trained if m in served_held]


def test_failed_gates_exit_3_and_a_broken_cycle_exits_1_with_its_report(loop_setup, tiny_recipe):
    recipe, run, folder = loop_setup
    _log(folder, chat_rows(3, seed=40), {0: '{"sum": -1}'})
    failing = tiny_recipe(training={"max_steps": 2, "save_steps": 2}, eval={"gates": {"exact_match": ">=1.5"}, "checks": []})
    res = _once(failing, folder)
    assert res.exit_code == 3 and "gates failed" in res.output, res.output
    assert not rollout_path(folder, "tiny").exists() and os.path.realpath(folder / "adapters" / "tiny") == str(run)
    (folder / "adapters" / "tiny").unlink()
    (folder / "adapters" / "tiny").mkdir()  # something the loop must not replace
    broken = _once(recipe, folder)
    assert broken.exit_code == 1 and "not an adapter link" in broken.output
    assert cycles(folder)[0][1].outcome == "error"


def test_cycles_never_overlap(loop_setup):
    from tunesmith.errors import RunError

    recipe, run, folder = loop_setup
    with cycle_lock(folder / LOOP_DIR), pytest.raises(RunError, match="another loop cycle is running"):
        run_cycle(LoopOptions(folder, recipe, "tiny", embedder="char-ngrams"))
