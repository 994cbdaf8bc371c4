"""Distillation from a teacher model (a base model spec or a finished tunesmith run).

sequence: the teacher answers every prompt (greedy); the answers are saved in the run folder as a normal
  chat dataset (distill/train.jsonl, distill/eval.jsonl), audited (distill/audit.json), and the student is
  SFT-trained on them, so eval later measures the student's agreement with its teacher.
logits: the student matches the teacher's next-token distributions on the recipe's demonstrations through
  TRL's GKD trainer (generalised JSD; `distill.lmbda` of the steps on student-generated answers). Teacher and
  student must share a tokenizer.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import method_sections, models
from tunesmith.data import dataset
from tunesmith.data.convert import write_rows
from tunesmith.data.formats import row_id
from tunesmith.data.lengths import fit_conversation
from tunesmith.data.template import prompt_messages, reference
from tunesmith.errors import RecipeError
from tunesmith.eval.generate import generate
from tunesmith.loader import load_target
from tunesmith.method_details import AuditCounts, DistillDetails, TeacherFile, TeacherFiles
from tunesmith.method_sections import DistillSection
from tunesmith.records import Tokens, read_record, write_record
from tunesmith.run import is_run_dir, load_run, write_json_atomic
from tunesmith.train import _trl, speed
from tunesmith.train.method import Datasets, Method, Parts
from tunesmith.train.rows import apply_length_policy, prompt_row, prompt_split, split_rows
from tunesmith.train.sft import METHOD as SFT

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example
    from tunesmith.records import TokenCounts
    from tunesmith.run import Run

GENERATED = "distill"  # the run's sub-folder holding the teacher's answers (sequence mode)


def load_teacher(spec: str, dtype: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, description) for a base model spec or a tunesmith run folder (its tuned model)."""
    loaded = load_target(spec, dtype)
    return loaded.model, loaded.tokenizer, _described(loaded.run, spec)


def describe_teacher(spec: str) -> str:
    """What a teacher spec is, as load_teacher says it, without loading the model."""
    return _described(load_run(spec) if is_run_dir(spec) else None, spec)


def _described(run: Run | None, spec: str) -> str:
    return f"run {run.dir} (base {run.recipe.model.base})" if run is not None else f"model {spec}"


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when both tokenizers map every token to the same id (logit distillation compares vocabularies)."""
    return bool(a.get_vocab() == b.get_vocab())


def generate_dataset(recipe: Recipe, out_dir: Path) -> DistillDetails:
    """Teacher answers for the train and eval prompts, written as chat JSONL; returns what was written."""
    from tunesmith.rag.prompt import augment_rows

    d = METHOD.settings(recipe)
    train, evaluation = split_rows(recipe.data, recipe.training.seed, prompt_row)
    model, tokenizer, described = load_teacher(d.teacher or "", recipe.model.dtype)
    started = time.time()
    files: dict[str, TeacherFile] = {}
    for split, rows in (("train", train), ("eval", evaluation)):
        if not rows:
            continue
        # With rag, the teacher answers from the context the student then trains with (SFT's datasets add it again
        # to the raw prompts written below, from the same index), so the student learns to answer from that context.
        prompts = [r["prompt"] for r in augment_rows(rows, recipe)]
        answers = generate(model, tokenizer, prompts, d.max_new_tokens, d.batch_size)
        out = [
            # The source row's id: the student's held-out rows keep the ids the ladder saw before training.
            {"id": row_id(r, r["source"]), "messages": r["prompt"] + [{"role": "assistant", "content": a}], "source": r["source"]}
            for r, a in zip(rows, answers)
        ]
        path = write_rows(out_dir / f"{split}.jsonl", out)
        files[split] = TeacherFile(
            path=str(path), rows=len(out), sha256=models.sha256_file(path), empty_answers=sum(not a for a in answers)
        )
    del model
    gc.collect()
    return DistillDetails(
        teacher=described,
        teacher_spec=d.teacher,
        files=TeacherFiles(**files),
        teacher_seconds=round(time.time() - started, 1),
        prompts_from=recipe.data.train,
    )


def logit_rows(recipe: Recipe, tokenizer: Any, examples: list[Any]) -> tuple[list[dict[str, Any]], TokenCounts]:
    """GKD rows ({messages}: the prompt, then the answer) within data.max_length (data.lengths.fit_conversation),
    with the manifest's counts. The GKD collator would otherwise cut over-long rows from the left, uncounted."""
    d = recipe.data
    rows = [
        {
            "prompt": prompt_messages(e.messages),
            "answer": [{"role": "assistant", "content": reference(e.messages)}],
            "source": e.source,
        }
        for e in examples
    ]
    fit = lambda r: fit_conversation(tokenizer, r["prompt"], r["answer"], d.max_length, d.overlong)
    kept, counts = apply_length_policy(rows, fit, d, METHOD.measured_as)
    return [{"messages": r["prompt"] + r["answer"]} for r in kept], counts


class Distill(Method[DistillSection]):
    declared = method_sections.get("distill")
    details = DistillDetails
    row_shape = "a prompt (sequence: the teacher answers it) or a demonstration (logits)"
    measured_as = "the rendered conversation"
    reference = "the teacher's answer (sequence) or the demonstration's (logits)"
    no_reference = "none yet: the teacher writes the answers when the run trains"
    init_from_data = False  # needs a teacher, which the data cannot suggest
    needs_answers = False  # sequence: the teacher answers each prompt

    def generates(self, recipe: Recipe) -> bool:
        d = self.settings(recipe)
        return d.mode == "logits" and d.lmbda > 0  # on-policy steps sample from the student

    def held_out_split(self, recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:

        return prompt_split(recipe, with_context)  # the teacher's answer rows keep their prompt row's id

    def trains_as(self, recipe: Recipe) -> Method[Any]:
        return SFT if self.settings(recipe).mode == "sequence" else self

    def prepare(self, recipe: Recipe, resume: bool) -> Recipe:
        """sequence: the teacher's answers (written once, reused on resume) and the student's recipe, which is this
        recipe on those answers: run.yaml then points at them, so `tunesmith eval` scores the agreement."""
        if self.settings(recipe).mode != "sequence":
            return recipe
        from tunesmith.data import audit
        from tunesmith.train import start

        out_dir = recipe.run_dir / GENERATED
        marker = out_dir / "generated.json"
        if not resume:
            start.refuse_finished(recipe.run_dir)  # before paying for the teacher's answers
        if marker.exists():
            generated = read_record(marker, DistillDetails, 1)
        else:
            generated = generate_dataset(recipe, out_dir)
            write_record(marker, generated)
        files = generated.files or TeacherFiles()
        data = {"train": [files.train.path] if files.train else [], "eval": files.eval.path if files.eval else None}
        student = recipe.model_copy(update={"data": recipe.data.model_copy(update=data)})
        tokenizer = models.load_tokenizer(models.resolve_base(recipe.model.base))
        write_json_atomic(out_dir / "audit.json", audit.audit_recipe(student, self, tokenizer).as_dict())
        return student

    def datasets(self, recipe: Recipe, tokenizer: Any) -> Datasets:
        from datasets import Dataset

        train_ex, eval_ex = dataset.recipe_examples(recipe)
        train_rows, train_counts = logit_rows(recipe, tokenizer, train_ex)
        eval_rows, eval_counts = logit_rows(recipe, tokenizer, eval_ex)
        return Datasets(Dataset.from_list(train_rows), Dataset.from_list(eval_rows), Tokens(train=train_counts, eval=eval_counts))

    def trainer(self, recipe: Recipe, parts: Parts) -> Any:

        # The teacher is frozen whatever the student's adapter: under bf16 it is stored in bf16 too (model.dtype auto).
        teacher_dtype = speed.weights_dtype(recipe, parts.levers.bf16, frozen=True)
        teacher, teacher_tok, _ = load_teacher(self.settings(recipe).teacher or "", teacher_dtype)
        if not same_tokenizer(parts.tokenizer, teacher_tok):
            why = "logits needs the teacher and the student to share a tokenizer; this teacher's differs: use mode: sequence"
            raise RecipeError([("distill.mode", why)])
        return _trl.gkd_trainer(recipe, self.settings(recipe), parts, teacher)

    def record(self, recipe: Recipe, trainer: Any, final_eval: dict[str, float]) -> DistillDetails:
        d = self.settings(recipe)
        if d.mode == "logits":
            return DistillDetails(
                mode=d.mode, teacher=describe_teacher(d.teacher or ""), teacher_spec=d.teacher, beta=d.beta,
                temperature=d.temperature, lmbda=d.lmbda,
            )  # fmt: skip
        import json

        out_dir = recipe.run_dir / GENERATED
        report = json.loads((out_dir / "audit.json").read_text(encoding="utf-8"))
        audit = AuditCounts(errors=report["errors"], warnings=report["warnings"])
        generated = read_record(out_dir / "generated.json", DistillDetails, 1)
        return generated.model_copy(update={"audit": audit, "teacher_spec": d.teacher})

    def summary(self, details: DistillDetails) -> list[str]:
        return [f"teacher: {details.teacher or details.teacher_spec}"]


METHOD = Distill()
