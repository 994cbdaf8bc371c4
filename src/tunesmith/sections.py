"""The base of every recipe section and its path fields, shared by config.py and method_sections.py (each method's
own section), so a method's section does not import the Recipe it becomes part of.

Validating a section does no file I/O: a path is resolved against the recipe's folder here, and whether it exists
is checked by preflight (tunesmith.preflight), for a recipe about to run, not for a finished run read back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MustExist:
    """Marks a path field whose file or folder preflight checks (tunesmith.preflight.missing_files)."""


def base_dir(info: ValidationInfo) -> Path:
    """The recipe's folder, which relative paths in it are read against (validation context `base_dir`)."""
    return Path((info.context or {}).get("base_dir", "."))


def absolute(value: str, base: Path) -> str:
    """`value` as an absolute, normalised path: `~` expanded, a relative path read against `base`. Worked out from
    the text alone (no look at the file system: symlinks are kept as written)."""
    return os.path.abspath(base / Path(value).expanduser())


def _resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    return None if value is None else absolute(value, base_dir(info))


DataPath = Annotated[str, AfterValidator(_resolve_path), MustExist()]
"""A data file or folder, resolved against the recipe's folder; preflight reports it missing as a field error."""


def marked(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> bool:
    """Whether a field's type (or its metadata) holds a MustExist path: DataPath, list[DataPath], DataPath | None..."""
    if any(isinstance(m, MustExist) for m in metadata):
        return True
    return any(isinstance(a, MustExist) or marked(a) for a in get_args(annotation))
