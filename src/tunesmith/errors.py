"""Typed errors for people: each carries where the problem is and what to do.

The CLI turns any `TunesmithError` into one red paragraph and an exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class for every error a user can fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class RecipeError(TunesmithError):
    """The recipe (YAML + --set overrides) is invalid. `problems` lists every bad field."""

    def __init__(self, problems: list[tuple[str, str]], *, source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} problem(s){where}:"]
        lines += [f"  - {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines), hint="Fix the fields above (see `tunesmith init` for a documented recipe).")


class DataError(TunesmithError):
    """A data file is missing, unreadable or holds rows that cannot be used."""


class ModelError(TunesmithError):
    """A base model or run cannot be found or loaded."""


class RunError(TunesmithError):
    """A run directory is missing, incomplete or inconsistent."""


class RowError(ValueError):
    """A row that cannot be normalised. `code` is a stable check code; `index` the message index."""

    def __init__(self, code: str, message: str, index: int | None = None):
        super().__init__(message)
        self.code, self.message, self.index = code, message, index
