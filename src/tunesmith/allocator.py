"""The memory allocator a training, serving or evaluating process runs with: tcmalloc where the machine has it.

glibc's malloc keeps the heap a CPU training step frees: tensors of 128 KiB to 32 MiB come from its arenas and
stay mapped, so a step's peak holds its own activations plus what earlier steps left. tcmalloc (Debian/Ubuntu:
`libtcmalloc-minimal4`) reuses them by size class instead: on the benchmark CPU capped at AVX2 (docs/benchmarks.md)
the demo recipe's step peak fell from 2,100-2,200 MB to 1,790-1,880 MB and a step took 4.2-4.4 s instead of
4.6-6.6 s, with the same losses bit for bit. An allocator can only be chosen before the process starts, so the
`tunesmith` entry point (tunesmith/__main__.py) re-runs itself once with the library preloaded (`LD_PRELOAD`) for the commands that load a
model (HEAVY_COMMANDS); `tunesmith --help` and the light commands never do.

TUNESMITH_ALLOCATOR picks: `auto` (default: tcmalloc, else jemalloc, else the system's), `tcmalloc`, `jemalloc`,
`system` (never preload), or a path to a shared library. Where none is found, `auto` runs on the system allocator
and the training plan says how to install one. The re-run restores the caller's LD_PRELOAD for everything the
process starts (graders, workers), so only tunesmith's own process runs on the preloaded allocator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tunesmith.errors import TunesmithError

ENV = "TUNESMITH_ALLOCATOR"
# Set on the re-run: the pid that already tried a preload (execve keeps the pid), and the caller's own LD_PRELOAD.
_TRIED = "TUNESMITH_ALLOCATOR_TRIED"
_CALLERS = "TUNESMITH_ALLOCATOR_CALLERS_PRELOAD"
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
SEARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
# Commands that load a model or a trainer: the ones worth a re-run of the interpreter (~0.2 s).
HEAVY_COMMANDS = frozenset({"train", "demo", "eval", "ladder", "sweep", "serve", "studio", "chat", "loop", "retrain", "distill"})
INSTALL_HINT = "install libtcmalloc-minimal4 (Debian/Ubuntu) or gperftools (Fedora)"


class AllocatorError(TunesmithError):
    """TUNESMITH_ALLOCATOR names an allocator that is unknown or not installed."""

    exit_code = 78  # EX_CONFIG


def choice() -> str:
    """TUNESMITH_ALLOCATOR, lower-cased (`auto` when unset); a path is returned as given."""
    value = os.environ.get(ENV, "").strip()
    return value if "/" in value else (value.lower() or "auto")


def find(wanted: str | None = None, dirs: Sequence[str] = SEARCH) -> tuple[str, Path] | None:
    """(name, library path) of the allocator `wanted` (default: TUNESMITH_ALLOCATOR) on this machine; None for
    `system`, for `auto` when none is installed, and off Linux. AllocatorError for an unknown name, or a named
    allocator or path that is not there (the user asked for it)."""
    wanted = choice() if wanted is None else wanted
    if wanted == "system" or not sys.platform.startswith("linux"):
        return None
    if "/" in wanted:
        path = Path(wanted)
        if not path.is_file():
            raise AllocatorError(f"{ENV}={wanted}: no such library", hint=f"Point {ENV} at a shared library, or unset it.")
        return path.name, path
    if wanted not in ("auto", *LIBRARIES):
        raise AllocatorError(
            f"{ENV}={wanted!r} is not an allocator tunesmith knows",
            hint=f"Use one of: auto, {', '.join(LIBRARIES)}, system, or a path to a shared library.",
        )
    for name in LIBRARIES if wanted == "auto" else (wanted,):
        for folder in dirs:
            for lib in LIBRARIES[name]:
                if (Path(folder) / lib).is_file():
                    return name, Path(folder) / lib
    if wanted != "auto":
        raise AllocatorError(f"{ENV}={wanted}: not installed on this machine", hint=f"To use it, {INSTALL_HINT}.")
    return None


def active(maps: str | None = None) -> str:
    """The allocator this process runs on: `tcmalloc`, `jemalloc`, or `system` (read from /proc/self/maps)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "system"
    for name in LIBRARIES:
        if f"lib{name}" in maps:
            return name
    return "system"


def plan_line() -> str:
    """What `tunesmith train` on this machine will allocate with, for the training plan."""
    try:
        found = find()
    except AllocatorError as exc:
        return f"allocator: {exc.message}"
    if found is not None:
        return f"allocator: {found[0]} ({found[1].name}), preloaded for training, eval and serving"
    if choice() == "system" or not sys.platform.startswith("linux"):
        return "allocator: the system's malloc"
    return f"allocator: the system's malloc; {INSTALL_HINT} for less memory and faster CPU steps (docs/benchmarks.md)"


def preload_env(env: dict[str, str], found: tuple[str, Path] | None) -> dict[str, str]:
    """A copy of `env` that preloads `found`'s library ahead of any LD_PRELOAD the caller set."""
    out = dict(env)
    if found is not None:
        out[_CALLERS] = env.get("LD_PRELOAD", "")
        out["LD_PRELOAD"] = " ".join(p for p in (str(found[1]), env.get("LD_PRELOAD", "")) if p)
    return out


def restore_callers_preload() -> None:
    """In a re-run process: give children the caller's LD_PRELOAD back (the allocator is already loaded here)."""
    if _CALLERS in os.environ:
        callers = os.environ.pop(_CALLERS)
        if callers:
            os.environ["LD_PRELOAD"] = callers
        else:
            os.environ.pop("LD_PRELOAD", None)


def wants_rerun(argv: Sequence[str]) -> tuple[str, Path] | None:
    """The allocator to re-run `tunesmith argv` with, or None: not a heavy command, `--help`, already running on a
    preloaded allocator, already tried in this process, or nothing installed. AllocatorError for a bad
    TUNESMITH_ALLOCATOR."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in HEAVY_COMMANDS or "--help" in argv or "-h" in argv:
        return None
    if os.environ.get(_TRIED) == str(os.getpid()) or active() != "system":
        return None
    return find()


def rerun_env(found: tuple[str, Path]) -> dict[str, str]:
    """The environment to re-run this process with on `found`'s allocator (marked so it is tried once)."""
    env = preload_env(dict(os.environ), found)
    env[_TRIED] = str(os.getpid())  # execve keeps the pid: the re-run sees it and does not try again
    return env
