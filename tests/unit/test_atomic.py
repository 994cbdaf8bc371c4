"""The one file-writing helper: random temp names created O_EXCL | O_NOFOLLOW beside the target, never a planted
link followed (at the temp name or at the target), the old file kept until the new one is complete."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from helpers import plant_links, predictable_temp_names, untouched, victim
from tunesmith import atomic


@pytest.fixture
def planted(monkeypatch, tmp_path):
    """The file planted links point at; temp names made predictable so the first one each helper draws is planted."""
    predictable_temp_names(monkeypatch)
    return victim(tmp_path)


def plant(folder: Path, target_name: str, outside: Path) -> list[Path]:
    return plant_links(folder, [target_name], outside)


def assert_untouched(outside: Path, links: list[Path]) -> None:
    assert untouched(outside, links)


@pytest.mark.parametrize("how", ["text", "bytes", "path"])
def test_planted_temp_link_is_never_followed(planted, tmp_path, how):
    out = tmp_path / "shared" / "report.json"
    links = plant(out.parent, out.name, planted)
    if how == "text":
        atomic.write_text_atomic(out, "new\n")
    elif how == "bytes":
        atomic.write_bytes_atomic(out, b"new\n")
    else:
        with atomic.atomic_path(out) as tmp:
            tmp.write_text("new\n")
    assert_untouched(planted, links)
    assert out.read_text() == "new\n" and not out.is_symlink()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, *(p.name for p in links)])


def test_link_at_the_target_is_replaced_not_written_through(tmp_path):
    outside = tmp_path / "victim.txt"
    outside.write_text("not yours\n")
    out = tmp_path / "out.txt"
    out.symlink_to(outside)
    atomic.write_text_atomic(out, "new\n")
    assert outside.read_text() == "not yours\n"
    assert not out.is_symlink() and out.read_text() == "new\n"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic.atomic_open(out) as fh:
        fh.write("half")
        raise RuntimeError("stopped mid-write")
    with pytest.raises(RuntimeError), atomic.atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stopped mid-write")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_private_permissions_hold_from_the_first_byte(tmp_path):
    old = os.umask(0)
    try:
        key = atomic.write_text_atomic(tmp_path / "api_key", "secret\n", perms=0o600)
        shared = atomic.write_text_atomic(tmp_path / "report.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o666


def test_staged_dir_publishes_a_readable_folder_and_refuses_a_full_one(planted, tmp_path):
    out = tmp_path / "merged"
    links = plant(tmp_path, out.name, planted)
    with atomic.staged_dir(out) as stage:
        (stage / "config.json").write_text("{}")
    assert_untouched(planted, links)
    assert (out / "config.json").read_text() == "{}" and stat.S_IMODE(out.stat().st_mode) & 0o055
    with pytest.raises(OSError), atomic.staged_dir(out) as stage:  # a non-empty folder is never replaced
        (stage / "config.json").write_text("[]")
    assert (out / "config.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.") and not p.is_symlink()]


def test_open_new_and_replace_symlink_never_reuse_a_planted_name(planted, tmp_path):
    log = tmp_path / "job.log"
    log.symlink_to(planted)
    with pytest.raises(FileExistsError):
        atomic.open_new(log)
    assert planted.read_text() == "not yours\n"
    link = tmp_path / "current"
    links = plant(tmp_path, link.name, planted)
    atomic.replace_symlink(link, "runs/a")
    atomic.replace_symlink(link, "runs/b")
    assert os.readlink(link) == "runs/b"
    assert_untouched(planted, links)
