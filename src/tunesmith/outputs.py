"""Where a command may write: a new folder, or one a marker file proves tunesmith made; never over an input.

A folder tunesmith creates gets a `.tunesmith` marker (JSON) naming the command and the entries it writes there.
A folder that exists, is not empty and has no marker belongs to the user: it is refused, never emptied.
`overwrite=True` lets a rerun replace only the entries the marker lists, and refuses when a listed file was edited
since tunesmith wrote it (its SHA-256 differs), so a user's edit is never lost either.
A rerun keeps the previous output until its replacement is complete: the new entries are written into a private
staging folder (`replacing`) and moved over the old ones only at the end; a command whose files cannot be staged
(the demo's run folder records its own path) sets the old entries aside and puts them back if it fails (`set_aside`).
Single output files (`data convert --out`, ...) are recorded in the marker of the folder they land in; an
existing file is replaced only with `overwrite=True` and only when the marker records it, unchanged, and only by
the atomic rename of a complete new file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunesmith.atomic import fsync_dir, write_text_atomic
from tunesmith.errors import TunesmithError
from tunesmith.models import sha256_file

MARKER = ".tunesmith"


class OutputError(TunesmithError):
    """An output path cannot be written without losing something (or cannot be written at all)."""

    exit_code = 73  # EX_CANTCREAT


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker, or None when it has none (or an unreadable one, which proves nothing)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(folder: Path, marker: dict[str, Any]) -> None:
    write_text_atomic(folder / MARKER, json.dumps(marker, indent=1, sort_keys=True))


def _sha256(path: Path) -> str:

    return sha256_file(path)


def _check_writable(folder: Path, what: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {folder} is read-only", hint="Choose a folder you can write to.")


def _make_folder(path: Path, what: str) -> None:
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder", hint="Choose another path.")
    _check_writable(parent, f"{what} {path}: the folder")
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {exc.strerror or exc}") from None


def _check_unedited(folder: Path, marker: dict[str, Any]) -> None:
    """Refuse when a file the marker lists was edited since tunesmith wrote it (replacing it would lose the edit)."""
    own: dict[str, str | None] = marker.get("own", {})
    edited = [name for name, sha in own.items() if sha and (folder / name).is_file() and _sha256(folder / name) != sha]
    if edited:
        raise OutputError(
            f"{folder}: {', '.join(edited)} changed since `tunesmith {marker.get('command')}` wrote it; "
            "--overwrite would lose the edit",
            hint="Move the edited file(s) away first, or choose a new folder.",
        )


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def claim_dir(
    path: str | Path, command: str, *, overwrite: bool = False, reuse: bool = False, what: str = "output folder"
) -> Path:
    """Make `path` this command's output folder and return it (resolved).

    New or empty: created and marked. Marked by the same command: with `reuse` kept as it is (a resumed run);
    with `overwrite` accepted once no listed file was edited (nothing is removed here: write the new output with
    `replacing` or `set_aside`); otherwise refused while it holds earlier output.
    A non-empty folder without a marker, a file, or a read-only place: refused with OutputError.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder", hint="Choose a new folder.")
    if not path.exists():
        _make_folder(path, what)
        _write_marker(path, {"command": command, "own": {}})
        return path
    _check_writable(path, what)
    marker = read_marker(path)
    entries = [p.name for p in path.iterdir() if p.name != MARKER]
    if marker is None or marker.get("command") != command:
        if entries or marker is not None:
            made_by = (
                f"by `tunesmith {marker.get('command')}`" if marker and marker.get("command") else "by you, not by tunesmith"
            )
            raise OutputError(
                f"{what} {path} already exists and holds files made {made_by} ({', '.join(sorted(entries)[:5]) or MARKER})",
                hint="tunesmith writes only into a new folder or one the same command created: choose a new folder.",
            )
        _write_marker(path, {"command": command, "own": {}})
        return path
    own = [name for name in marker.get("own", {}) if (path / name).exists()]
    if reuse or not own:
        return path
    if not overwrite:
        raise OutputError(
            f"{what} {path} already exists and holds the output of an earlier `tunesmith {command}` "
            f"({', '.join(sorted(own)[:5])})",
            hint="Pass --overwrite to replace that output (only files tunesmith wrote there are removed), "
            "or choose a new folder.",
        )
    _check_unedited(path, marker)
    return path


@contextmanager
def replacing(folder: str | Path, *names: str) -> Iterator[Path]:
    """A private staging folder inside `folder` to write a command's new entries into; when the block ends, each entry
    (`names`, which may be nested like data/train.jsonl; default: every top-level entry written, a marker excepted)
    is moved over the one of the same name and recorded in the marker. A file is swapped by one atomic rename (the
    old one kept by a hard link until every entry is in place); a folder by moving the old one aside first. A failure
    anywhere leaves the previous output as it was."""
    folder = Path(folder)
    stage = Path(tempfile.mkdtemp(prefix=".tunesmith-new-", suffix=".tmp", dir=folder))
    try:
        yield stage
        entries = list(names) or sorted(p.name for p in stage.iterdir() if p.name != MARKER)
        _check_unedited(folder, read_marker(folder) or {})  # the user may have edited one while the command ran
        _swap_in(stage, folder, entries)
        record(folder, *entries)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, folder: Path, names: list[str]) -> None:
    """Move stage/NAME onto folder/NAME for every name; on a failure midway, every previous entry is put back."""
    aside = Path(tempfile.mkdtemp(prefix=".tunesmith-old-", suffix=".tmp", dir=folder))
    done: list[str] = []
    try:
        for name in names:
            new, old = stage / name, folder / name
            if old.exists() or old.is_symlink():
                (aside / name).parent.mkdir(parents=True, exist_ok=True)
                _keep(old, aside / name, stays=new.is_file() and old.is_file() and not old.is_symlink())
            old.parent.mkdir(parents=True, exist_ok=True)
            os.replace(new, old)  # a file at `old` is replaced in one step: readers see the old or the new one
            done.append(name)
    except BaseException:
        for name in reversed(done):
            _remove(folder / name)
        for name in names:
            if (aside / name).exists() or (aside / name).is_symlink():
                os.replace(aside / name, folder / name)
        shutil.rmtree(aside, ignore_errors=True)  # only once everything is back (else it stays, holding it)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(folder)


def _keep(old: Path, kept: Path, stays: bool) -> None:
    """Keep `old` at `kept` until the swap is over: a hard link when `stays` (it is then replaced in one rename)."""
    if stays:
        try:
            os.link(old, kept)
            return
        except OSError:  # a filesystem without hard links: moved instead
            pass
    os.rename(old, kept)


@contextmanager
def set_aside(folder: str | Path) -> Iterator[None]:
    """For output that cannot be staged elsewhere: move the entries the marker lists into a hidden folder inside
    `folder` for the block; put them back if the block fails (after removing what it wrote there), delete them once it
    succeeded. A process killed midway leaves them in `folder/.tunesmith-old-*`, not lost."""
    folder = Path(folder)
    marker = read_marker(folder) or {}
    _check_unedited(folder, marker)
    aside = Path(tempfile.mkdtemp(prefix=".tunesmith-old-", suffix=".tmp", dir=folder))
    moved = [name for name in marker.get("own", {}) if (folder / name).exists() or (folder / name).is_symlink()]
    for name in moved:
        (aside / name).parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder / name, aside / name)
    try:
        yield
    except BaseException:
        for name in moved:
            _remove(folder / name)
            os.rename(aside / name, folder / name)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def record(folder: str | Path, *names: str, command: str | None = None) -> None:
    """List `names` (entries of `folder`) in its marker as tunesmith's own output; files with their SHA-256.

    A folder without a marker gets one naming `command` (None for a folder tunesmith did not make: its other
    files stay the user's, only these entries are ours).
    """
    folder = Path(folder)
    marker = read_marker(folder) or {"command": command, "own": {}}
    own = dict(marker.get("own", {}))
    for name in names:
        target = folder / name
        own[name] = _sha256(target) if target.is_file() else None
    _write_marker(folder, {**marker, "own": own})


def check_new_dir(path: str | Path, what: str = "--out") -> Path:
    """For outputs staged elsewhere and renamed into place: `path` must not exist (or be an empty folder) and its
    parent must be a writable folder. Returns it resolved; creates nothing."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder", hint="Choose a new folder.")
    if path.is_dir() and any(path.iterdir()):
        raise OutputError(
            f"{what} {path} exists and is not empty", hint="Choose a new folder; tunesmith never writes over your files."
        )
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder", hint="Choose another path.")
    _check_writable(parent, f"{what} {path}: the folder")
    return path


def claim_file(path: str | Path, *, inputs: Sequence[str | Path] = (), overwrite: bool = False, what: str = "--out") -> Path:
    """Check that `path` may be written: not an input, not a folder, writable, and new unless tunesmith wrote it.

    An existing file is replaced only with `overwrite` and only when the marker of its folder records it unchanged.
    Call `record_file(path)` once it is written.
    """
    path = Path(path).expanduser()
    resolved = path.resolve()
    for src in inputs:
        if Path(src).expanduser().resolve() == resolved:
            raise OutputError(
                f"{what} {path} is an input of this command", hint="tunesmith never writes over its input: choose another path."
            )
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file", hint="Give a file path, e.g. out.jsonl.")
    parent = next((p for p in resolved.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder", hint="Choose another path.")
    _check_writable(parent, f"{what} {path}: the folder")
    if not path.exists():
        return path
    own = (read_marker(resolved.parent) or {}).get("own", {})
    sha = own.get(resolved.name)
    if not overwrite or not sha:
        detail = "an earlier tunesmith output; --overwrite replaces it" if sha else "a file tunesmith did not create"
        raise OutputError(
            f"{what} {path} already exists ({detail})", hint="Choose a new path; tunesmith never writes over your files."
        )
    if _sha256(resolved) != sha:
        raise OutputError(
            f"{what} {path} changed since tunesmith wrote it; --overwrite would lose the edit", hint="Choose a new path."
        )
    return path


def record_file(path: str | Path) -> None:
    """Record a written output file in its folder's marker (so a later --overwrite may replace it)."""
    resolved = Path(path).expanduser().resolve()
    record(resolved.parent, resolved.name)


def owns(folder: str | Path, command: str) -> bool:
    """Whether `folder` carries the marker of `command`."""
    marker = read_marker(Path(folder))
    return marker is not None and marker.get("command") == command
