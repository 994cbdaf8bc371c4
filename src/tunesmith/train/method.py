"""What a training method is: one object declaring everything tunesmith needs to train, check, count and record it.

Each method module (sft.py, dpo.py, grpo.py, distill.py) defines one `Method` subclass and an instance of it,
`METHOD`; train/methods.py registers them. train/skeleton.py runs every method the same way:

    prepare(recipe) → start (run folder, tokenizer, data check) → datasets → levers (train/speed.py) → model
    → trainer (train/_trl.py) → train → record → finish (adapter, manifest)

Code outside the method modules asks a method what it does (`samples_completions`, `packs_rows`, ...); it never
compares method names. Importing this module (and the method modules) stays cheap: torch, transformers and TRL
are imported inside the hooks that use them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from tunesmith.data import dataset
from tunesmith.data.dataset import split_examples
from tunesmith.method_sections import Declaration
from tunesmith.records import MethodDetails, Tokens
from tunesmith.sections import Section
from tunesmith.train import policy

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example
    from tunesmith.data.lengths import Fit
    from tunesmith.records import Speed

S = TypeVar("S", bound=Section)


@dataclass
class Datasets:
    """What a method trains and evaluates on (datasets.Dataset objects), with the manifest's counts."""

    train: Any
    eval: Any | None
    counts: Tokens
    lengths: list[int] | None = None  # tokens of each training row, for the planner and micro-batches (packed rows)


@dataclass
class Parts:
    """What the skeleton prepared for a method's trainer."""

    model: Any  # the base model (4-bit for qlora), before peft wraps it
    data: Datasets
    tokenizer: Any
    peft_config: Any  # None for a full fine-tune
    callbacks: list[Any]
    run_dir: Path
    levers: Speed


class Method(ABC, Generic[S]):
    """A training method. Class attributes declare it; the hooks below are called by train/skeleton.py."""

    # What the recipe knows of it (method_sections.py: section, rules, preflight checks); a built-in method takes
    # its name, help and section from there. A method without one declares those three itself.
    declared: ClassVar[Declaration | None] = None
    name: ClassVar[str]
    help: ClassVar[str]  # one line: what it trains on (the recipe's `method` field documentation)
    section: ClassVar[type[Section] | None] = None  # its recipe section, named after it (`dpo:`); None: no settings
    details: ClassVar[type[MethodDetails] | None] = None  # its manifest record (Manifest.details)
    row_shape: ClassVar[str]  # what a data row must carry
    measured_as: ClassVar[str]  # its length policy: what is measured against data.max_length
    reference: ClassVar[str]  # what a held-out answer is compared with
    # what reports say when the held-out rows carry no answer at all
    no_reference: ClassVar[str] = "none: the held-out rows have no answers, so no reference metric applies"
    samples_completions: ClassVar[bool] = False  # learns from completions it samples: no fixed answer is trained
    # every row must carry the answer it trains on: a prompt-only row is dropped with a `no_answer` finding (GRPO
    # samples its answers, distillation's teacher writes them)
    needs_answers: ClassVar[bool] = True
    packs_rows: ClassVar[bool] = False  # SFT's levers: packing, varlen attention, labelled logits, micro-batches, plan
    liger: ClassVar[bool] = False  # Liger's kernels apply (TRL's other trainers swap in Liger's own losses)
    scores_labels: ClassVar[bool] = False  # its loss scores labelled positions through TRL's fused LM head (labelled logits)
    init_from_data: ClassVar[bool] = True  # `tunesmith init --data` can write its recipe (distill needs a teacher)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("declared")
        if declared is not None:
            cls.name, cls.help, cls.section = declared.name, declared.help, declared.section

    def declaration(self) -> Declaration:
        """What the recipe knows of this method: its declaration, or one made of its name, help and section."""
        d = self.declared
        return d if d is not None and d.name == self.name else Declaration(self.name, self.help, self.section)

    def settings(self, recipe: Recipe) -> S:
        """This method's section of the recipe."""
        return cast(S, getattr(recipe, self.name))

    def completion_room(self, recipe: Recipe | None) -> int:
        """Tokens each prompt must leave free for a sampled completion (0 where a fixed answer is trained);
        recipe None: the section's default."""
        return 0

    def generates(self, recipe: Recipe) -> bool:
        """Whether the trainer generates while training: outside autocast, so the adapter's inputs are cast."""
        return self.samples_completions

    def fit_row(self, tokenizer: Any, obj: dict[str, Any], max_length: int, overlong: str, room: int) -> Fit | None:
        """This method's length policy on one raw data row (data/lengths.py), for the data check; None: the row is
        measured as a rendered conversation with its loss mask (the demonstration methods)."""
        return None

    def held_out_split(self, recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:
        """(train, held-out) examples of the one split training uses (data.dataset.split_rows): the demonstrations.
        with_context: with `rag`, retrieved context in every prompt, as training saw them."""
        if with_context:
            return dataset.recipe_examples(recipe)
        return split_examples(recipe.data, recipe.training.seed)

    def eval_examples(self, recipe: Recipe) -> list[Example]:
        """The held-out examples a run is scored on (saved as the run's data/eval.jsonl)."""
        return self.held_out_split(recipe)[1]

    def describe_reference(self, refs: list[str]) -> str:
        """What the expected answers are, as this method defines them (shown in every report that scores them)."""
        return self.reference if any(r.strip() for r in refs) else self.no_reference

    def starter_section(self, answers: list[str]) -> dict[str, Any] | None:
        """The section `tunesmith init --data` writes for data whose answers are these; None: the defaults."""
        return None

    def trains_as(self, recipe: Recipe) -> Method[Any]:
        """The method whose datasets, levers and trainer train this recipe (distill sequence: SFT)."""
        return self

    def prepare(self, recipe: Recipe, resume: bool) -> Recipe:
        """Work before the run folder is locked and the model loads (a broken reward or teacher fails here);
        returns the recipe to train."""
        return recipe

    def load_model(self, recipe: Recipe, base_path: str, dtype: str | None) -> Any:
        """The model this method trains, before peft wraps it: the causal LM (4-bit for qlora), dtype from the levers."""
        return policy.load(recipe, base_path, dtype)

    def evaluate(self, run: Any, max_examples: int | None = None, progress: Any = None) -> Any:
        """`tunesmith eval` of a finished run of this method, when it is not base vs tuned answers to the held-out
        prompts (a reward model scores pairs): its EvalReport; None: the generation comparison (eval/compare.py)."""
        return None

    @abstractmethod
    def datasets(self, recipe: Recipe, tokenizer: Any) -> Datasets:
        """The train and held-out datasets this method trains on, with the manifest's token counts."""

    @abstractmethod
    def trainer(self, recipe: Recipe, parts: Parts) -> Any:
        """The TRL trainer (built in train/_trl.py) that trains `parts.model` on `parts.data`."""

    def record(self, recipe: Recipe, trainer: Any, final_eval: dict[str, float]) -> MethodDetails | None:
        """What the manifest records of this method (its `details` record), after training."""
        return None

    def summary(self, details: Any) -> list[str]:
        """Lines `tunesmith train` prints about this method's details."""
        return []
