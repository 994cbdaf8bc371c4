"""Every file tunesmith writes appears whole or not at all, and no one else's file is ever written through a link.

The rules (docs/security.md, "Files and the command line"):
- New content goes to a temp file in the destination's own folder (a rename never crosses filesystems), under a
  random name, created with O_CREAT | O_EXCL | O_NOFOLLOW: a file or symlink someone planted under that name is
  never opened, followed or truncated; another random name is tried instead.
- Writers that need a path rather than an open file (pyarrow, llama.cpp's GGUF writer, `save_pretrained`) get a
  path inside a private folder (mkdtemp: random name, mode 0700, created with mkdir, which never follows a link).
- The temp file is flushed and fsynced, then renamed over the destination only once the writer finished. A
  symlink at the destination is replaced by the new file (rename does not follow it), never written through.
- Any failure removes the temp file (or folder) and leaves the previous destination as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TRIES = 100


def temp_name(path: Path) -> Path:
    """A fresh, unpredictable temp name beside `path` (hidden, ends in .tmp)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _create(path: Path, perms: int) -> tuple[int, Path]:
    """(fd, name) of a new file beside `path`; never opens anything that already exists there, link or not."""
    for _ in range(_TRIES):
        tmp = temp_name(path)
        try:
            return os.open(tmp, _FLAGS, perms), tmp
        except FileExistsError:
            continue  # taken (or planted): draw another name
    raise FileExistsError(f"no free temp name beside {path} after {_TRIES} tries")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems refuse fsync on folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(src: Path, dst: Path) -> None:
    """Flush the finished file `src` and rename it over `dst` (a symlink at `dst` is replaced, not followed)."""
    _fsync_file(src)
    os.replace(src, dst)
    fsync_dir(dst.parent)


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None, perms: int = 0o666
) -> Iterator[IO[Any]]:
    """Open a new temp file beside `path` for writing ("w" text or "wb" bytes); when the block ends without error,
    fsync it and rename it over `path`. `perms` is filtered by the umask (0o600 keeps a file private)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path, perms)
    try:
        if perms & 0o077 == 0:
            os.fchmod(fd, perms)  # a private file stays private whatever the umask
        fh: IO[Any] = os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a path inside a private temp folder beside `path`, for writers that open files by name; once the
    block has written it, fsync it and rename it onto `path`. A failure leaves the old `path` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield stage / path.name
        publish(stage / path.name, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic dance, briefly a common default rather than 0
    os.umask(mask)
    return mask


@contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new private folder beside `path` to fill; on success it gets the usual folder permissions and is
    renamed onto `path`, which must not exist or be an empty folder. A failure removes the staged folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield stage
        for root, _, files in os.walk(stage):
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    _fsync_file(Path(root, name))
        stage.chmod(0o777 & ~_umask())  # mkdtemp made it 0700 so nothing could be planted while it was filled
        if path.is_dir() and not path.is_symlink():
            path.rmdir()  # empty (a non-empty one makes this raise and the stage is dropped)
        os.replace(stage, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def new_parents(path: str | Path) -> Iterator[None]:
    """Create the missing folders above `path` for the block; if it fails, remove those it created (when empty), so a
    refused or failed command leaves no trace, not even the folders it made for its output."""
    made = [p for p in Path(path).parents if not p.exists()]  # deepest first
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # no longer empty: something else wrote there meanwhile
                break
        raise


def write_text_atomic(path: str | Path, text: str, *, perms: int = 0o666) -> Path:
    """Write UTF-8 text to `path` atomically; returns the path."""
    with atomic_open(path, "w", perms=perms) as fh:
        fh.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes, *, perms: int = 0o666) -> Path:
    """Write bytes to `path` atomically; returns the path."""
    with atomic_open(path, "wb", perms=perms) as fh:
        fh.write(data)
    return Path(path)


def open_new(path: str | Path, mode: str = "wb") -> IO[Any]:
    """Create `path` for writing, refusing if anything (a file or a planted link) is already there: for files written
    as they grow (logs), which cannot be renamed into place."""
    fd = os.open(path, _FLAGS, 0o666)
    return os.fdopen(fd, mode)


def replace_symlink(link: str | Path, target: str | Path) -> None:
    """Point `link` at `target` in one rename: readers see the old target or the new one, never neither."""
    link = Path(link)
    for _ in range(_TRIES):
        tmp = temp_name(link)
        try:
            os.symlink(target, tmp)  # symlink() fails on an existing name: nothing planted is reused
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temp name beside {link} after {_TRIES} tries")
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
