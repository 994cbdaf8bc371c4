"""The allocator tunesmith's heavy commands run on: tcmalloc (or jemalloc) preloaded where the machine has it, the
choice read from TUNESMITH_ALLOCATOR, recorded in the run's manifest, and training's losses the same either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import allocator
from tunesmith.allocator import AllocatorError


@pytest.fixture
def libs(tmp_path, monkeypatch):
    """A library folder holding both allocators (empty files: finding is by name), and a clean environment."""
    folder = tmp_path / "lib"
    folder.mkdir()
    for name in ("libtcmalloc_minimal.so.4", "libjemalloc.so.2"):
        (folder / name).write_bytes(b"")
    monkeypatch.delenv(allocator.ENV, raising=False)
    return folder


def test_auto_prefers_tcmalloc_then_jemalloc_then_the_system(libs, tmp_path):
    assert allocator.find(dirs=[str(libs)]) == ("tcmalloc", libs / "libtcmalloc_minimal.so.4")
    (libs / "libtcmalloc_minimal.so.4").unlink()
    assert allocator.find(dirs=[str(libs)]) == ("jemalloc", libs / "libjemalloc.so.2")
    assert allocator.find(dirs=[str(tmp_path / "empty")]) is None  # nothing installed: the system's malloc


def test_a_named_allocator_is_used_or_refused(libs, tmp_path, monkeypatch):
    assert allocator.find("jemalloc", dirs=[str(libs)]) == ("jemalloc", libs / "libjemalloc.so.2")
    assert allocator.find("system", dirs=[str(libs)]) is None
    with pytest.raises(AllocatorError, match="not installed") as missing:
        allocator.find("tcmalloc", dirs=[str(tmp_path / "empty")])
    assert "libtcmalloc-minimal4" in (missing.value.hint or "")
    with pytest.raises(AllocatorError, match="not an allocator") as unknown:
        allocator.find("mimalloc", dirs=[str(libs)])
    assert "auto, tcmalloc, jemalloc, system" in (unknown.value.hint or "")
    monkeypatch.setenv(allocator.ENV, str(libs / "libjemalloc.so.2"))  # a path is taken as given
    assert allocator.find(dirs=[]) == ("libjemalloc.so.2", libs / "libjemalloc.so.2")
    monkeypatch.setenv(allocator.ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(AllocatorError, match="no such library"):
        allocator.find(dirs=[])


def test_the_preload_goes_first_and_the_callers_own_comes_back_for_children(libs, monkeypatch):
    found = ("tcmalloc", libs / "libtcmalloc_minimal.so.4")
    env = allocator.preload_env({"LD_PRELOAD": "/opt/mine.so", "PATH": "/bin"}, found)
    assert env["LD_PRELOAD"] == f"{found[1]} /opt/mine.so" and env["PATH"] == "/bin"
    assert allocator.preload_env({"PATH": "/bin"}, None) == {"PATH": "/bin"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    allocator.restore_callers_preload()  # the re-run process: its children get the caller's LD_PRELOAD only
    assert os.environ["LD_PRELOAD"] == "/opt/mine.so"
    monkeypatch.setenv("LD_PRELOAD", str(found[1]))
    monkeypatch.setenv("TUNESMITH_ALLOCATOR_CALLERS_PRELOAD", "")
    allocator.restore_callers_preload()
    assert "LD_PRELOAD" not in os.environ


def test_only_commands_that_load_a_model_rerun(monkeypatch):
    monkeypatch.setattr(allocator, "find", lambda *a, **k: ("tcmalloc", Path("/x/libtcmalloc_minimal.so.4")))
    monkeypatch.setattr(allocator, "active", lambda maps=None: "system")
    assert allocator.wants_rerun(["train", "r.yaml"]) is not None
    assert allocator.wants_rerun(["--help"]) is None and allocator.wants_rerun(["train", "--help"]) is None
    assert allocator.wants_rerun(["data", "check", "r.yaml"]) is None and allocator.wants_rerun([]) is None
    monkeypatch.setenv("TUNESMITH_ALLOCATOR_TRIED", str(os.getpid()))  # a preload that did not take: no loop
    assert allocator.wants_rerun(["train", "r.yaml"]) is None


def test_the_allocator_is_read_from_the_process_maps():
    assert allocator.active("7f0 r-xp 0 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n") == "tcmalloc"
    assert allocator.active("7f0 r-xp 0 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n") == "jemalloc"
    assert allocator.active("7f0 r-xp 0 /usr/lib/x86_64-linux-gnu/libc.so.6\n") == "system"


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    full.update(env, HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=full, capture_output=True, text=True)


def test_an_allocator_asked_for_by_a_wrong_name_stops_the_command(tmp_path):
    res = _cli(["train", "recipe.yaml"], tmp_path, TUNESMITH_ALLOCATOR="mimalloc")
    assert res.returncode == 78 and "not an allocator tunesmith knows" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "eval_loss" not in r]


@pytest.mark.skipif(
    allocator.find("auto") is None, reason="no tcmalloc or jemalloc here (`make test` installs libtcmalloc-minimal4 as root)"
)
def test_train_runs_on_the_preloaded_allocator_with_the_same_losses(tiny_recipe, tmp_path):
    """The real CLI in a fresh process: `tunesmith train` re-runs itself on the preloaded allocator, its manifest
    says so, and its losses equal those of the same run on the system's malloc (TUNESMITH_ALLOCATOR=system)."""
    from tunesmith.run import load_run

    name = allocator.find("auto")[0]  # type: ignore[index]
    runs = {}
    for choice in ("auto", "system"):
        recipe = tiny_recipe(output_dir=f"run-{choice}")
        res = _cli(["train", str(recipe)], tmp_path, TUNESMITH_ALLOCATOR=choice)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[choice] = load_run(tmp_path / f"run-{choice}")
    assert runs["auto"].manifest.speed.allocator == name and runs["system"].manifest.speed.allocator == "system"
    # glibc's trim cannot reach tcmalloc's heap: it is only on where glibc allocates
    assert not runs["auto"].manifest.speed.release_memory and runs["system"].manifest.speed.release_memory
    auto, system = _losses(runs["auto"].dir), _losses(runs["system"].dir)
    assert len(auto) == len(system) == 4 and auto == pytest.approx(system, rel=1e-6)
