"""Where a command may write: a new folder, or one a marker file proves tunesmith made; never over an input.

A folder tunesmith creates gets a `.tunesmith` marker (JSON) naming the command and the entries it writes there.
A folder that exists, is not empty and has no marker belongs to the user: it is refused, never emptied.
`overwrite=True` removes only the entries the marker lists, and refuses when a listed file was edited since
tunesmith wrote it (its SHA-256 differs), so a user's edit is never lost either.
Single output files (`data convert --out`, ...) are recorded in the marker of the folder they land in; an
existing file is replaced only with `overwrite=True` and only when the marker records it, unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import TunesmithError

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
    from tunesmith.models import sha256_file

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


def _remove_own(folder: Path, marker: dict[str, Any]) -> None:
    """Delete the entries the marker lists; refuse first if any listed file was edited since it was written."""
    own: dict[str, str | None] = marker.get("own", {})
    edited = [name for name, sha in own.items() if sha and (folder / name).is_file() and _sha256(folder / name) != sha]
    if edited:
        raise OutputError(
            f"{folder}: {', '.join(edited)} changed since `tunesmith {marker.get('command')}` wrote it; "
            "--overwrite would lose the edit",
            hint="Move the edited file(s) away first, or choose a new folder.",
        )
    for name in own:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def claim_dir(
    path: str | Path, command: str, *, overwrite: bool = False, reuse: bool = False, what: str = "output folder"
) -> Path:
    """Make `path` this command's output folder and return it (resolved).

    New or empty: created and marked. Marked by the same command: with `reuse` kept as it is (a resumed run);
    with `overwrite` its listed entries are removed; otherwise refused while it holds earlier output.
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
    _remove_own(path, marker)
    _write_marker(path, {**marker, "own": {}})
    return path


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
