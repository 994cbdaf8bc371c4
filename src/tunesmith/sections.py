"""The base of every recipe section, shared by config.py and the method modules that declare their own section
(train/dpo.py's DPOSection, ...), so a method's section does not import the Recipe it becomes part of."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def checks_environment(info: ValidationInfo) -> bool:
    """Whether validation also checks the environment (files exist, modules import): yes for a recipe about to
    run (load_recipe), no for a finished run read back (load_run), whose data may have moved."""
    return bool((info.context or {}).get("check_files", True))
