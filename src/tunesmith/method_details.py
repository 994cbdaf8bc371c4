"""What each built-in training method records in a run's manifest (`Manifest.details`), and their registration.

Reading a run (tunesmith.run.load_run) needs these records and nothing of training: they live here, next to the
recipe's method declarations (method_sections.py), so loading a manifest imports no trainer code. Each method
module (train/<name>.py) names its record as `Method.details`; train/methods.py registers the records of methods
registered later (a test's own).
"""

from __future__ import annotations

from pydantic import Field

from tunesmith.method_sections import RewardSpec
from tunesmith.records import MethodDetails, Record, register_details


class DPODetails(MethodDetails):
    beta: float
    loss_type: str
    reference: str = Field(description="The reference policy: the base under the adapter, or precomputed log-probs.")
    final_eval: dict[str, float] = Field(default_factory=dict, description="TRL's eval rewards/* and logps/* figures.")


class GRPODetails(MethodDetails):
    rewards: list[RewardSpec] = Field(default_factory=list)
    num_generations: int
    first_step_reward: float | None = Field(None, description="Mean reward of the first logged step.")
    last_step_reward: float | None = Field(None, description="Mean reward of the last logged step.")
    logged_steps: int = 0
    warnings: list[str] = Field(default_factory=list, description="Rewards GRPO could not learn from (train/reward_watch.py).")


class TeacherFile(Record):
    path: str
    rows: int
    sha256: str
    empty_answers: int = 0


class TeacherFiles(Record):
    train: TeacherFile | None = None
    eval: TeacherFile | None = None


class AuditCounts(Record):
    errors: int
    warnings: int


class DistillDetails(MethodDetails):
    """The manifest's record; in sequence mode also distill/generated.json, what the teacher wrote (a resumed run
    reuses it instead of paying for the answers twice)."""

    mode: str = "sequence"
    teacher: str | None = Field(None, description="What the teacher was: `run DIR (base ...)` or `model SPEC`.")
    teacher_spec: str | None = None
    files: TeacherFiles | None = None  # sequence: the teacher's answers
    teacher_seconds: float | None = None
    audit: AuditCounts | None = None  # sequence: the data check of the teacher's answers
    prompts_from: list[str] = Field(default_factory=list, description="sequence: the data.train the prompts came from.")
    beta: float | None = None  # logits: GKD's settings
    temperature: float | None = None
    lmbda: float | None = None


PAIRS = "data/eval_pairs.jsonl"
"""The held-out pairs a reward run is evaluated on, saved in the run folder (data/eval.jsonl keeps prompt + chosen)."""


class RewardDetails(MethodDetails):
    pairs: str = Field(PAIRS, description="The held-out pairs (run folder relative) `tunesmith eval` scores.")
    held_out_pairs: int = 0
    final_eval: dict[str, float] = Field(
        default_factory=dict, description="TRL's held-out accuracy, margin, mean reward and loss at the end of training."
    )


BUILT_IN: dict[str, type[MethodDetails]] = {
    "dpo": DPODetails,
    "grpo": GRPODetails,
    "distill": DistillDetails,
    "reward": RewardDetails,
}
for _name, _record in BUILT_IN.items():
    register_details(_name, _record)
