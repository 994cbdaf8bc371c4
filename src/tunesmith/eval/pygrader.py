"""python graders run in a separate process, with a time limit per output and a memory limit.

The child is a fresh interpreter (`python -I`) that sets its own address-space limit (resource.setrlimit,
RLIMIT_AS) before it runs the grader's source, then answers one JSON line per output on a private pipe (what
the grader prints goes to stderr, never into the answers). The parent waits at most `timeout_s` for each answer:
a grader that loops is killed and that output scores 0 with the reason, a fresh child takes the next output. A
grader that allocates past the limit gets a MemoryError (or dies), and that output scores 0 with the reason. So
no grader can hang the eval, take its memory, or end it; only a source that is not a grader at all (no
`grade(sample, item)`, a syntax error) is a RecipeError.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import RecipeError

# The child: standard library only, so it starts in a few tens of milliseconds.
_CHILD = r"""
import json, math, os, resource, sys
answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)  # the grader's prints go to stderr, not into the answers
sys.stdout = sys.stderr
requests = os.fdopen(os.dup(0), encoding="utf-8")
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
def say(**kw):
    answers.write(json.dumps(kw) + "\n"); answers.flush()
config = json.loads(requests.readline())
limit = config["memory_mb"] * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
namespace = {"__name__": "__grader__"}
try:
    exec(compile(config["source"], config["filename"], "exec"), namespace)
except MemoryError:
    say(setup="error", message="MemoryError: the source needs more than the memory limit to load")
    sys.exit(0)
except BaseException as exc:
    say(setup="definition", message=f"{type(exc).__name__}: {exc}")
    sys.exit(0)
if not callable(namespace.get("grade")):
    say(setup="definition", message="the source defines no function grade(sample, item)")
    sys.exit(0)
say(setup="ok")
for line in requests:
    request = json.loads(line)
    try:
        value = namespace["grade"](request["sample"], request["item"])
        score = float(value)
        if not math.isfinite(score):
            raise ValueError(f"grade returned {score}, not a finite number")
        say(score=score)
    except MemoryError:
        say(error=f"MemoryError: over the memory limit of {config['memory_mb']} MB")
    except BaseException as exc:
        say(error=f"{type(exc).__name__}: {exc}")
"""


START_S = 30.0  # seconds a fresh interpreter may take to start, on top of the grader's time to load its source


@dataclass
class Outcome:
    """One output's score, or None with the reason it could not be scored."""

    score: float | None
    error: str | None = None


class _Child:
    """One grader process; `ask` returns its answer to one output, or None when it timed out or died."""

    def __init__(self, source: str, name: str, memory_mb: int):
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(  # noqa: S603 - the interpreter running tunesmith, with fixed arguments
            [sys.executable, "-I", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.buffer = b""
        self.ended = False
        self.send({"source": source, "filename": f"<grader {name}>", "memory_mb": memory_mb})

    def send(self, message: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message, default=str) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read(self, timeout_s: float) -> dict[str, Any] | None:
        """The next JSON line within timeout_s; None on timeout or when the process ended."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.ended = True  # its end of the pipe closed: the process is exiting
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return dict(json.loads(line))

    def why_gone(self) -> str:
        """Why the process gave no answer: it died (its exit status, its last stderr line) or it was too slow."""
        code = self.proc.poll()
        if code is None and self.ended:  # closed its pipe: wait for its exit status rather than guess
            try:
                code = self.proc.wait(timeout=START_S)
            except subprocess.TimeoutExpired:
                return "the grader process closed its output and did not exit"
        if code is None:
            return ""
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return f"the grader process died (exit status {code}{': ' + lines[-1] if lines else ''})"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.stderr.close()


def run(
    source: str,
    name: str,
    samples: Sequence[dict[str, Any]],
    items: Sequence[dict[str, Any]],
    timeout_s: float,
    memory_mb: int,
) -> list[Outcome]:
    """grade(sample, item) for each pair in a child process: a score, or 0 with the reason where it raised, ran past
    timeout_s (seconds, per output; loading the source may take START_S more) or past memory_mb. RecipeError when the source
    is not a grader (no grade function, a syntax error, an exception while it loads)."""
    out: list[Outcome] = []
    child: _Child | None = None
    try:
        for sample, item in zip(samples, items, strict=True):
            if child is None:
                child = _Child(source, name, memory_mb)
                ready = child.read(timeout_s + START_S)
                if ready is None or ready.get("setup") != "ok":
                    reason = _not_ready(ready, child, name, timeout_s)
                    return out + [Outcome(None, reason)] * (len(samples) - len(out))  # every later one would fail alike
            answer = child.read(timeout_s) if child.send({"sample": sample, "item": item}) else None
            if answer is None:
                reason = child.why_gone() or f"timed out after {timeout_s:g} s"
                out.append(Outcome(None, reason))
                child.close()
                child = None  # a fresh process for the next output
                continue
            out.append(Outcome(answer["score"]) if "score" in answer else Outcome(None, str(answer.get("error"))))
    finally:
        if child is not None:
            child.close()
    return out


def _not_ready(ready: dict[str, Any] | None, child: _Child, name: str, timeout_s: float) -> str:
    if ready is not None and ready.get("setup") == "definition":
        child.close()
        raise RecipeError(
            [(f"eval.graders.{name}", f"{ready.get('message')} (the source must define grade(sample, item) returning a number)")]
        )
    if ready is not None:
        return str(ready.get("message"))
    return child.why_gone() or f"timed out after {timeout_s + START_S:g} s while starting and loading the source"
