"""The `tunesmith` console script and `python -m tunesmith`."""

from __future__ import annotations

import os
import sys

from tunesmith import allocator


def main() -> None:
    """Re-run once on the preloaded allocator where the command loads a model (tunesmith/allocator.py), then the CLI."""
    argv = sys.argv[1:]
    try:
        found = allocator.wants_rerun(argv)
    except allocator.AllocatorError as exc:  # asked for by name: refuse rather than run on another allocator
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(exc.exit_code) from None
    if found is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "tunesmith", *argv], allocator.rerun_env(found))
    allocator.restore_callers_preload()
    from tunesmith.cli import app  # after the re-run decision: a re-run process imports the command line once

    app(prog_name="tunesmith")


if __name__ == "__main__":
    main()
