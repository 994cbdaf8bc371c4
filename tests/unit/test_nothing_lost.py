"""Nothing the user made is ever lost: hostile commands through the real CLI leave the user's tree unchanged.

Each test snapshots a folder tree (paths + SHA-256), runs a command a new user could plausibly type, and asserts
the exit code, one clear message (no traceback), and that the tree is unchanged except for the files the command
documents. Training runs on the tiny random Llama.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import chat_rows, write_jsonl
from tunesmith.cli import app
from tunesmith.outputs import MARKER, OutputError

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> SHA-256 of its bytes ('dir' for folders)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    out = " ".join(res.output.split())  # rich wraps long lines
    assert "Traceback" not in out and not (res.exception and not isinstance(res.exception, SystemExit)), out
    return res.exit_code, out


def user_tree(root: Path) -> Path:
    """A folder of the user's own work: data, notes, a hand-made adapter/ folder."""
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "train.jsonl", chat_rows(12, seed=5))
    (root / "notes.md").write_text("my notes\n")
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"my own weights")
    return root


# --- deleting or overwriting what tunesmith did not create --------------------------------------------------------


def test_demo_refuses_a_dir_holding_other_files(tmp_path):
    home = user_tree(tmp_path / "work")
    before = snapshot(tmp_path)
    code, out = cli("demo", "--dir", home)
    assert code == OutputError.exit_code and "by you, not by tunesmith" in out
    assert snapshot(tmp_path) == before


def test_init_never_writes_over_existing_data_files(tmp_path):
    home = user_tree(tmp_path / "proj")
    before = snapshot(tmp_path)
    code, out = cli("init", home)
    assert code == OutputError.exit_code and "already exists" in out
    assert snapshot(tmp_path) == before


def test_init_overwrite_replaces_only_its_own_unedited_files(tmp_path):
    proj = tmp_path / "proj"
    assert cli("init", proj)[0] == 0
    assert json.loads((proj / MARKER).read_text())["command"] == "init"
    (proj / "mine.txt").write_text("keep me")
    code, out = cli("init", proj)
    assert code == OutputError.exit_code and "--overwrite" in out
    assert cli("init", proj, "--overwrite")[0] == 0 and (proj / "mine.txt").read_text() == "keep me"
    (proj / "recipe.yaml").write_text("# my edits\n")  # the user's work now
    before = snapshot(tmp_path)
    code, out = cli("init", proj, "--overwrite")
    assert code == OutputError.exit_code and "changed since" in out
    assert snapshot(tmp_path) == before


def test_train_refuses_an_output_dir_with_other_files(tiny_recipe, tmp_path):
    path = tiny_recipe()
    user_tree(tmp_path / "runs" / "tiny")  # output_dir holds an adapter/ the user made
    before = snapshot(tmp_path)
    code, out = cli("train", path)
    assert code == OutputError.exit_code and "output_dir" in out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["convert", "fix", "split"])
def test_data_outputs_never_replace_existing_files_or_inputs(tmp_path, command):
    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(40, seed=3))
    (tmp_path / "d.train.jsonl").write_text("mine\n")
    (tmp_path / "out.jsonl").write_text("mine\n")
    before = snapshot(tmp_path)
    args = {
        "convert": [
            ["data", "convert", src, "--to", "messages", "--out", tmp_path / "out.jsonl"],
            ["data", "convert", src, "--to", "messages", "--out", src],
        ],
        "fix": [
            ["data", "fix", src, "--no-tokens", "--out", tmp_path / "out.jsonl"],
            ["data", "fix", src, "--no-tokens", "--out", src],
        ],
        "split": [["data", "split", src], ["data", "split", src, "--overwrite"]],
    }[command]
    for a in args:
        code, out = cli(*a)
        assert code == OutputError.exit_code and ("already exists" in out or "input" in out), out
    assert snapshot(tmp_path) == before


def test_data_check_html_never_replaces_a_users_file(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(12, seed=3))
    (tmp_path / "report.html").write_text("<p>my page</p>")
    before = snapshot(tmp_path)
    code, out = cli("data", "check", src, "--no-tokens", "--html", tmp_path / "report.html")
    assert code == OutputError.exit_code and "did not create" in out
    assert snapshot(tmp_path) == before
    assert cli("data", "check", src, "--no-tokens", "--html", tmp_path / "mine.html")[0] == 0
    assert cli("data", "check", src, "--no-tokens", "--html", tmp_path / "mine.html")[0] == 0  # its own report, rewritten


def test_data_output_overwrite_replaces_only_its_own_output(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(10, seed=3))
    out = tmp_path / "o.jsonl"
    assert cli("data", "convert", src, "--to", "prompt_completion", "--out", out)[0] == 0
    assert cli("data", "convert", src, "--to", "prompt_completion", "--out", out)[0] == OutputError.exit_code
    assert cli("data", "convert", src, "--to", "messages", "--out", out, "--overwrite")[0] == 0
    assert '"messages"' in out.read_text()
    out.write_text(out.read_text() + "\n")  # edited by the user: no longer tunesmith's to replace
    code, msg = cli("data", "convert", src, "--to", "messages", "--out", out, "--overwrite")
    assert code == OutputError.exit_code and "changed since" in msg


def test_out_that_is_a_folder_or_read_only_is_one_clear_error(tmp_path, small_disk):
    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(10, seed=3))
    (tmp_path / "folder").mkdir()
    code, out = cli("data", "convert", src, "--to", "messages", "--out", tmp_path / "folder")
    assert code == OutputError.exit_code and "is a folder" in out
    locked = small_disk("1m", read_only=True)  # permission bits do not stop root; a read-only mount does
    code, out = cli("data", "convert", src, "--to", "messages", "--out", locked / "o.jsonl")
    assert code == OutputError.exit_code and "read-only" in out
    code, out = cli("init", locked / "proj")
    assert code == OutputError.exit_code and "read-only" in out


# --- a finished run is immutable; one writer per run folder --------------------------------------------------------


@pytest.fixture
def finished(tiny_recipe):
    path = tiny_recipe(training={"max_steps": 2, "save_steps": 2})
    code, out = cli("train", path)
    assert code == 0, out
    return path, path.parent / "runs" / "tiny"


def test_resume_of_a_finished_run_changes_nothing(finished):
    path, run_dir = finished
    before = snapshot(run_dir)
    for extra in ([], ["--set", "training.seed=7"], ["--set", "training.learning_rate=0.1"]):
        code, out = cli("train", path, "--resume", *extra)
        assert code == 1 and "finished run" in out and "never changed" in out
        assert snapshot(run_dir) == before


def test_refused_resume_changes_nothing_and_a_changed_schedule_is_refused(finished):
    path, run_dir = finished
    (run_dir / "manifest.json").unlink()  # an unfinished run with a complete checkpoint-2
    before = snapshot(run_dir)
    code, out = cli("train", path, "--resume", "--set", "training.seed=7")
    assert code == 1 and "refusing to resume" in out
    assert snapshot(run_dir) == before
    code, out = cli("train", path, "--resume", "--set", "training.learning_rate=0.1", "--set", "training.max_steps=4")
    assert code == 1 and "schedule changed" in out and "training.learning_rate" in out and "training.max_steps" in out
    assert snapshot(run_dir) == before


def test_second_train_on_a_locked_run_folder_is_refused(tiny_recipe, tmp_path):
    from filelock import FileLock

    from tunesmith.outputs import claim_dir

    path = tiny_recipe()
    run_dir = claim_dir(tmp_path / "runs" / "tiny", "train")  # as a first `train` leaves it while it runs
    with FileLock(str(run_dir / ".lock")):
        before = snapshot(tmp_path)
        code, out = cli("train", path)
    assert code == 1 and "another tunesmith train holds" in out
    assert snapshot(tmp_path) == before


# --- checks that passed when they should not; tracebacks for user mistakes ----------------------------------------


def test_zero_row_file_and_trailing_user_turn_are_blocking(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    code, out = cli("data", "check", tmp_path / "empty.jsonl", "--no-tokens")
    assert code == 1 and "too_few_examples" in out
    row = chat_rows(1)[0]
    row["messages"].append({"role": "user", "content": "and then?"})
    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(12, seed=4) + [row])
    code, out = cli("data", "check", src, "--no-tokens")
    assert code == 1 and "ends_with_user_turn" in out
    assert cli("data", "fix", src, "--no-tokens", "--out", tmp_path / "fixed.jsonl")[0] == 0
    assert "and then?" not in (tmp_path / "fixed.jsonl").read_text()  # fix drops what the check flags
    code, out = cli("data", "convert", src, "--to", "prompt_completion", "--out", tmp_path / "pc.jsonl")
    assert code == 0 and "not_convertible" in out and "and then?" not in (tmp_path / "pc.jsonl").read_text()


@pytest.mark.parametrize("steps", [0, -2])
def test_max_steps_zero_or_negative_is_a_recipe_error(tiny_recipe, steps):
    code, out = cli("train", tiny_recipe(), "--set", f"training.max_steps={steps}")
    assert code == 1 and "training.max_steps" in out and "-1" in out


@pytest.mark.parametrize(
    "args",
    [
        ["merge", ".", "--out", "x", "--check-prompts", "0"],
        ["chat", ".", "--max-new-tokens", "0"],
        ["eval", ".", "--max-examples", "0"],
        ["demo", "--steps", "0"],
        ["data", "show", "f", "--row", "0"],
    ],
)
def test_non_positive_counts_are_refused(args):
    code, out = cli(*args)
    assert code == 2 and "Invalid value for" in out and "1" in out, out


def test_corrupt_gguf_base_and_unknown_target_modules_are_clear_errors(tiny_recipe, tmp_path):
    path = tiny_recipe()
    (tmp_path / "empty.gguf").write_bytes(b"")
    code, out = cli("train", path, "--set", f"model.base={tmp_path / 'empty.gguf'}")
    assert code == 1 and "not a readable GGUF" in out
    code, out = cli("train", path, "--set", "adapter.target_modules=[q_proj,nope_proj]")
    assert code == 1 and "adapter.target_modules" in out and "nope_proj" in out
    assert not (tmp_path / "runs" / "tiny").exists()  # a refused run leaves no folder


def test_merge_out_that_is_a_file_leaves_it_alone(finished, tmp_path):
    _, run_dir = finished
    (tmp_path / "model").write_text("mine")
    before = snapshot(tmp_path / "model")
    code, out = cli("merge", run_dir, "--out", tmp_path / "model")
    assert code == OutputError.exit_code and "is a file" in out
    assert (tmp_path / "model").read_text() == "mine" and snapshot(tmp_path / "model") == before
    sealed = snapshot(run_dir)
    code, out = cli("merge", run_dir, "--out", run_dir / "merged")
    assert code == OutputError.exit_code and "inside the run folder" in out
    assert snapshot(run_dir) == sealed


# --- real full disks (a small tmpfs) -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """Factory: a tmpfs of `size` mounted under tmp_path (root only; skipped otherwise)."""
    mounts: list[Path] = []

    def make(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {res.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)  # lazy: a failed writer may still hold a handle


def _tmp_leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or p.name == ".staging"]


def test_full_disk_while_training_is_exit_74_without_partial_files(tiny_recipe, small_disk):
    disk = small_disk("96k")  # room for run.yaml and logs, not for the first checkpoint (~120 KB)
    path = tiny_recipe(output_dir=str(disk / "run"), training={"max_steps": 2, "save_steps": 1})
    code, out = cli("train", path)
    assert code == 74 and "disk full" in out, out
    assert _tmp_leftovers(disk) == [] and not (disk / "run" / "manifest.json").exists()
    assert not [p for p in (disk / "run" / "checkpoints").glob("checkpoint-*") if not (p / "COMPLETE").exists()]


def test_full_disk_while_merging_is_exit_74_and_leaves_nothing(finished, small_disk):
    _, run_dir = finished
    disk = small_disk("64k")  # the merged tiny model is ~200 KB
    code, out = cli("merge", run_dir, "--out", disk / "new" / "merged")
    assert code == 74 and "disk full" in out, out
    assert list(disk.iterdir()) == []


def test_torch_save_full_disk_runtime_error_is_recognised(small_disk):
    """torch.save reports ENOSPC as RuntimeError, not OSError: a real one, from a real small filesystem."""
    import torch

    from tunesmith.train.faults import disk_full

    disk = small_disk("16k")
    with pytest.raises(RuntimeError) as info:
        torch.save(torch.zeros(64 * 1024), disk / "big.pt")
    full = disk_full(info.value, "saving", disk)
    assert full is not None and full.exit_code == 74


# --- a rerun keeps the previous output until its replacement is complete -------------------------------------------


def test_ladder_rerun_stopped_while_measuring_keeps_the_previous_report(tiny_recipe, tmp_path, monkeypatch):
    from tunesmith.eval import ladder

    path = tiny_recipe(ladder={"max_new_tokens": 2})
    assert cli("ladder", path, "--max-examples", "1")[0] == 0
    out = tmp_path / "runs" / "tiny-ladder"
    before = snapshot(out)
    assert {"ladder.json", "ladder.html", "predictions.jsonl"} <= set(before)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ladder, "run_ladder", stopped)
    code, msg = cli("ladder", path, "--max-examples", "1", "--overwrite")
    assert code == 130 and "interrupted" in msg
    assert snapshot(out) == before  # byte for byte, and no staging folder left behind


def test_eval_rerun_failing_while_writing_keeps_the_previous_report(finished, monkeypatch):
    from tunesmith.eval import report as eval_report

    _, run_dir = finished
    assert cli("eval", run_dir, "--max-examples", "1")[0] == 0
    before = snapshot(run_dir / "eval")
    assert {"report.json", "report.html", "predictions.jsonl"} <= set(before)

    def full_disk(*args, **kwargs):
        raise OutputError("no space left while writing report.html")

    monkeypatch.setattr(eval_report, "write_html", full_disk)  # report.json and predictions.jsonl are written by then
    code, msg = cli("eval", run_dir, "--max-examples", "2")
    assert code == OutputError.exit_code and "no space left" in msg
    assert snapshot(run_dir / "eval") == before


def test_a_swap_that_fails_midway_puts_every_previous_entry_back(tmp_path, monkeypatch):
    from tunesmith import outputs

    folder = outputs.claim_dir(tmp_path / "out", "ladder")
    with outputs.replacing(folder) as stage:
        (stage / "a.json").write_text("old a")
        (stage / "pages").mkdir()
        (stage / "pages" / "p.html").write_text("old p")
        (stage / "z.txt").write_text("old z")
    before = snapshot(folder)
    real = outputs.os.replace
    calls = []

    def fail_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    folder = outputs.claim_dir(folder, "ladder", overwrite=True)
    monkeypatch.setattr(outputs.os, "replace", fail_third)
    with pytest.raises(OSError), outputs.replacing(folder) as stage:
        (stage / "a.json").write_text("new a")
        (stage / "pages").mkdir()
        (stage / "pages" / "p.html").write_text("new p")
        (stage / "z.txt").write_text("new z")
    monkeypatch.undo()
    assert snapshot(folder) == before


def test_init_overwrite_keeps_the_users_files_beside_its_own(tmp_path):
    proj = tmp_path / "proj"
    assert cli("init", proj)[0] == 0
    (proj / "data" / "mine.jsonl").write_text("my rows\n")  # the user's file inside a folder init made
    before = snapshot(proj)
    assert cli("init", proj, "--overwrite")[0] == 0
    assert (proj / "data" / "mine.jsonl").read_text() == "my rows\n"
    outside_index = lambda snap: {k for k in snap if not k.startswith("index/")}  # noqa: E731  (LanceDB versions)
    assert outside_index(snapshot(proj)) == outside_index(before)  # the same entries, nothing staged left behind


# --- a symlink planted at a temp name is never followed ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, written",
    [
        (["data", "convert", "{src}", "--to", "messages", "--out", "{shared}/out.jsonl"], ["out.jsonl"]),
        (["data", "convert", "{src}", "--to", "messages", "--out", "{shared}/out.parquet"], ["out.parquet"]),
        (["data", "fix", "{src}", "--no-tokens", "--out", "{shared}/fixed.jsonl.gz"], ["fixed.jsonl.gz"]),
        (["data", "split", "{src}", "--out-dir", "{shared}"], ["d.train.jsonl", "d.eval.jsonl"]),
        (["data", "check", "{src}", "--no-tokens", "--html", "{shared}/report.html"], ["report.html"]),
    ],
)
def test_planted_links_at_temp_names_are_never_followed(tmp_path, monkeypatch, args, written):
    from helpers import plant_links, predictable_temp_names, untouched, victim

    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(20, seed=3))
    shared = tmp_path / "shared"
    outside = victim(tmp_path)
    links = plant_links(shared, [*written, MARKER], outside)
    predictable_temp_names(monkeypatch)
    code, out = cli(*[a.format(src=src, shared=shared) for a in args])
    assert code == 0, out
    assert untouched(outside, links)
    for name in written:
        assert (shared / name).is_file() and not (shared / name).is_symlink() and (shared / name).stat().st_size > 0
    assert sorted(p.name for p in shared.iterdir()) == sorted([*written, MARKER, *(p.name for p in links)])


def test_merge_never_follows_a_planted_link(finished, tmp_path, monkeypatch):
    from helpers import plant_links, predictable_temp_names, untouched, victim

    _, run_dir = finished
    outside = victim(tmp_path)
    links = plant_links(tmp_path / "shared", ["merged"], outside)
    predictable_temp_names(monkeypatch)
    code, out = cli("merge", run_dir, "--out", tmp_path / "shared" / "merged")
    assert code == 0, out
    assert untouched(outside, links) and (tmp_path / "shared" / "merged" / "config.json").is_file()


# --- the "no traceback" sweep: every command, bad arguments ----------------------------------------------------------

# Parameters that name where a command writes (a new path there is valid, so they get a fresh one); every other
# path-like parameter is an input and receives each bad kind below.
OUTPUTS = {"out", "out_dir", "html", "export_retrain", "directory", "dir", "log", "adapters_dir"}
# Required parameters that are not paths: a valid value, so the failure is the bad input's.
VALUES = {
    "question": "where?",
    "to": "sft",
    "name": "nope-model",
    ("data convert", "to"): "messages",
    ("import openai", "model"): "smollm2-135m-instruct",  # the base is valid: the bad input is the job
}
# Options a command needs besides its inputs (checked before them): given valid, so the failure is the bad input's.
NEEDS = {"sweep": ["--set-grid", "training.seed=1,2"], "loop": ["--once"]}
# Kinds that are valid for a command's input: the studio shows empty folders of runs, data and serve logs.
VALID = {("studio", "folder")}
# Known to fail the sweep, owned elsewhere: `serve` starts the server before it has resolved its TARGET, and the
# model is then loaded (and fails) inside it (src/tunesmith/cli/serve.py:79, src/tunesmith/serve/server.py prepare).
KNOWN = {
    ("serve", kind): "serve resolves TARGET only after the server started" for kind in ("folder", "empty", "binary", "malformed")
}
SUFFIX = {"recipe": ".yaml", "file": ".jsonl", "files": ".jsonl", "seed_file": ".jsonl", "add": ".jsonl", "schema": ".json"}
BAD = {
    "missing": None,
    "folder": "dir",
    "empty": b"",
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00binary",
    "malformed": b"model: [unclosed\n  base: {oops\n\t- tab: x\n",
}


def commands(typer_app=None, path=()):
    """(argv prefix, callback) for every command and sub-command registered on the typer app."""
    from tunesmith.cli import app as root

    typer_app = typer_app or root
    for info in typer_app.registered_commands:
        yield (*path, info.name or info.callback.__name__.replace("_", "-")), info.callback
    for group in typer_app.registered_groups:
        yield from commands(group.typer_instance, (*path, group.name))


def params(callback):
    """(name, flag or None for an argument, required, annotation) of a command's parameters."""
    import inspect
    import typing

    from typer.models import ArgumentInfo

    hints = typing.get_type_hints(callback)
    for name, p in inspect.signature(callback).parameters.items():
        info = p.default
        flag = None if isinstance(info, ArgumentInfo) else (info.param_decls or (f"--{name.replace('_', '-')}",))[0]
        yield name, flag.split("/")[0] if flag else None, info.default is ..., hints[name]


def is_pathlike(name, annotation) -> bool:
    text = str(annotation)
    return (
        "Path" in text
        or name in ("target", "model", "name", "seed_file")
        or ("list" in text and name in ("files", "sources", "data", "runs", "adapter", "add", "against", "eval_files"))
    )


def sweep_cases():
    for argv, callback in commands():
        ps = list(params(callback))
        command = " ".join(argv)
        inputs = [(n, f, r) for n, f, r, a in ps if is_pathlike(n, a) and n not in OUTPUTS and (command, n) not in VALUES]
        required_inputs = [i for i in inputs if i[2]]
        chosen = required_inputs or inputs[:1]
        numbers = [(n, f) for n, f, r, a in ps if f and a in (int, float)]
        for kind in BAD if chosen else ():
            if (command, kind) in VALID:
                continue
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[command, kind])] if (command, kind) in KNOWN else []
            yield pytest.param(argv, ps, chosen, kind, None, id=f"{command}:{kind}", marks=marks)
        for name, flag in numbers:
            yield pytest.param(argv, ps, chosen, "missing", (flag, "-5"), id=f"{' '.join(argv)}:{name}=-5")
        yield pytest.param(argv, ps, chosen, "missing", ("--no-such-option", "1"), id=f"{' '.join(argv)}:unknown-option")


@pytest.mark.parametrize("argv, ps, chosen, kind, extra", list(sweep_cases()))
def test_no_traceback_on_bad_arguments(tmp_path, monkeypatch, argv, ps, chosen, kind, extra):
    import uvicorn

    def no_server(*args, **kwargs):
        raise AssertionError(f"`tunesmith {' '.join(argv)}` started a server on bad arguments")

    monkeypatch.setattr(uvicorn, "run", no_server)
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.md").write_text("my notes\n")
    args, named = list(argv), []
    chosen_names = [c[0] for c in chosen]
    for name, flag, required, _annotation in ps:
        if name in chosen_names:
            value = user / f"bad-{name}{SUFFIX.get(name, '')}"
            if BAD[kind] == "dir":
                value.mkdir()
            elif BAD[kind] is not None:
                value.write_bytes(BAD[kind])
            named.append(value.name)
        elif required and name in OUTPUTS:
            value = tmp_path / "new" / f"out-{name}{'.gguf' if 'gguf' in argv else '.jsonl'}"
        elif required:
            value = VALUES.get((" ".join(argv), name), VALUES.get(name, "x"))
        else:
            continue
        args += [str(value)] if flag is None else [flag, str(value)]
    args += NEEDS.get(" ".join(argv), [])
    if extra:
        args += list(extra)
    before = snapshot(tmp_path)
    res = runner.invoke(app, args, env={"COLUMNS": "1000"})  # long paths stay on one line
    out = " ".join(res.output.split())
    shown = " ".join(args[len(argv) :]).replace(str(tmp_path), "")
    assert not (res.exception and not isinstance(res.exception, SystemExit)), f"{shown}: {res.exception!r}\n{out}"
    assert "Traceback" not in out, f"{shown}: {out}"
    assert res.exit_code not in (0, None), f"{shown}: exit 0\n{out}"
    words = [*named, *(extra[0:1] if extra else []), "Invalid value", "Missing", "No such option"]
    assert any(w in out for w in words), f"{shown}: the message names nothing of what was wrong\n{out}"
    assert snapshot(tmp_path) == before, f"{shown}: the tree changed"


@pytest.mark.parametrize(
    "args, option",
    [
        (["data", "check", "{src}", "--no-tokens", "--near-threshold", "2"], "--near-threshold"),
        (["data", "check", "{src}", "--no-tokens", "--near-threshold", "-1"], "--near-threshold"),
        (["data", "check", "{src}", "--price-per-hour", "-5"], "--price-per-hour"),
        (["data", "check", "{src}", "--epochs", "0"], "--epochs"),
        (["data", "split", "{src}", "--eval", "1.5"], "--eval"),
        (["review", "stats", "{tmp}", "--min-agree", "0"], "--min-agree"),
        (["review", "export", "{tmp}", "--to", "sft", "--out", "{tmp}/o.jsonl", "--min-agree", "-1"], "--min-agree"),
    ],
)
def test_numbers_out_of_range_with_valid_inputs_are_refused(tmp_path, args, option):
    src = write_jsonl(tmp_path / "d.jsonl", chat_rows(12, seed=3))
    before = snapshot(tmp_path)
    code, out = cli(*[a.format(src=src, tmp=tmp_path) for a in args])
    assert code in (1, 2) and option in out, out
    assert snapshot(tmp_path) == before


def test_set_aside_puts_the_previous_output_back_when_the_rerun_fails(tmp_path):
    """The demo's way (its run folder records its own path): the old entries move aside, and come back on failure."""
    from tunesmith import outputs

    folder = outputs.claim_dir(tmp_path / "demo", "demo")
    (folder / "runs" / "demo").mkdir(parents=True)
    (folder / "runs" / "demo" / "manifest.json").write_text("old run")
    (folder / "recipe.yaml").write_text("old recipe")
    outputs.record(folder, "runs/demo", "recipe.yaml")
    (folder / "mine.txt").write_text("the user's")
    before = snapshot(folder)
    with pytest.raises(KeyboardInterrupt), outputs.set_aside(folder):
        assert not (folder / "runs" / "demo").exists() and (folder / "mine.txt").exists()
        (folder / "runs" / "demo").mkdir()
        (folder / "runs" / "demo" / "half.bin").write_text("half-written")
        raise KeyboardInterrupt
    assert snapshot(folder) == before
    with outputs.set_aside(folder):
        (folder / "recipe.yaml").write_text("new recipe")
    assert (folder / "recipe.yaml").read_text() == "new recipe" and not (folder / "runs" / "demo").exists()
    assert (folder / "mine.txt").read_text() == "the user's" and not list(folder.glob(".tunesmith-old-*"))
