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
import json
import logging
import time
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.config import Recipe
from tunesmith.data import audit
from tunesmith.data.convert import write_rows
from tunesmith.data.dataset import recipe_examples
from tunesmith.data.formats import row_id
from tunesmith.data.template import prompt_messages, reference
from tunesmith.errors import RecipeError
from tunesmith.records import write_manifest
from tunesmith.run import Run, load_run, write_json_atomic
from tunesmith.train import _trl, faults, policy, sft, speed, start
from tunesmith.train.callbacks import standard_callbacks
from tunesmith.train.finish import finish_run
from tunesmith.train.rows import prompt_row, split_rows

log = logging.getLogger(__name__)
GENERATED = "distill"


def load_teacher(spec: str, dtype: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, description) for a base model spec or a tunesmith run folder (its tuned model)."""
    from tunesmith.loader import load_target

    loaded = load_target(spec, dtype)
    if loaded.run is not None:
        return loaded.model, loaded.tokenizer, f"run {loaded.run.dir} (base {loaded.run.recipe.model.base})"
    return loaded.model, loaded.tokenizer, f"model {spec}"


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when both tokenizers map every token to the same id (logit distillation compares vocabularies)."""
    return bool(a.get_vocab() == b.get_vocab())


def generate_dataset(recipe: Recipe, out_dir: Path) -> dict[str, Any]:
    """Teacher answers for the train and eval prompts, written as chat JSONL; returns what was written."""
    from tunesmith.eval.generate import generate
    from tunesmith.rag.prompt import augment_rows

    d = recipe.distill
    train, evaluation = split_rows(recipe.data, recipe.training.seed, prompt_row)
    model, tokenizer, described = load_teacher(d.teacher or "", recipe.model.dtype)
    started = time.time()
    written: dict[str, Any] = {"teacher": described, "files": {}}
    for split, rows in (("train", train), ("eval", evaluation)):
        if not rows:
            continue
        # With rag, the teacher answers from the context the student then trains with (sft.run adds it again to the
        # raw prompts written below, from the same index), so the student learns to answer from that context.
        prompts = [r["prompt"] for r in augment_rows(rows, recipe)]
        answers = generate(model, tokenizer, prompts, d.max_new_tokens, d.batch_size)
        out = [
            # The source row's id: the student's held-out rows keep the ids the ladder saw before training.
            {"id": row_id(r, r["source"]), "messages": r["prompt"] + [{"role": "assistant", "content": a}], "source": r["source"]}
            for r, a in zip(rows, answers)
        ]
        path = write_rows(out_dir / f"{split}.jsonl", out)
        written["files"][split] = {
            "path": str(path),
            "rows": len(out),
            "sha256": models.sha256_file(path),
            "empty_answers": sum(not a for a in answers),
        }
    written["teacher_seconds"] = round(time.time() - started, 1)
    del model
    gc.collect()
    return written


def _sequence(recipe: Recipe, resume: bool, force: bool) -> Run:
    out_dir = recipe.run_dir / GENERATED
    marker = out_dir / "generated.json"
    if not resume:
        start.refuse_finished(recipe.run_dir)  # before paying for the teacher's answers
    if marker.exists():  # a resumed run reuses the teacher's answers instead of paying for them twice
        generated = json.loads(marker.read_text(encoding="utf-8"))
    else:
        generated = generate_dataset(recipe, out_dir)
        write_json_atomic(marker, generated)
    files = generated["files"]
    # The student recipe is this recipe on the generated data: run.yaml then says `distill` and points at the
    # teacher's answers, so `tunesmith eval` scores the student's agreement with its teacher.
    data = recipe.data.model_copy(update={"train": [files["train"]["path"]], "eval": files.get("eval", {}).get("path")})
    student = recipe.model_copy(update={"data": data})
    tokenizer = models.load_tokenizer(models.resolve_base(recipe.model.base))
    report = audit.audit_recipe(student, tokenizer)
    write_json_atomic(out_dir / "audit.json", report.as_dict())
    run = sft.run(student, resume=resume, force=force)  # sft.run audits again and refuses blocking errors
    # The student's manifest gains the teacher's lineage before the run is read back as finished.
    manifest = run.manifest.model_copy(
        update={
            "distill": {
                "mode": "sequence",
                "teacher_spec": recipe.distill.teacher,
                **generated,
                "audit": {"errors": len(report.errors), "warnings": len(report.warnings)},
                "prompts_from": recipe.data.train,
            }
        }
    )
    write_manifest(run.dir / "manifest.json", manifest)
    return load_run(run.dir)


def logit_rows(recipe: Recipe, tokenizer: Any, examples: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """GKD rows ({messages}: the prompt, then the answer) within data.max_length (data.lengths.fit_conversation),
    with the manifest's counts. The GKD collator would otherwise cut over-long rows from the left, uncounted."""
    from tunesmith.data.lengths import fit_conversation
    from tunesmith.train.rows import apply_length_policy

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
    kept, stats = apply_length_policy(rows, fit, d, "the rendered conversation")
    return [{"messages": r["prompt"] + r["answer"]} for r in kept], stats


def _logits(recipe: Recipe, resume: bool, force: bool) -> Run:
    import torch
    from datasets import Dataset
    from trl.experimental.gkd import GKDTrainer

    st = start.begin(recipe, resume, force)  # blocking data errors stop here, before any model loads
    run_dir, checkpoint, base_path, tokenizer = st.run_dir, st.checkpoint, st.base_path, st.tokenizer
    levers = speed.resolve_padded(recipe)  # bf16 autocast where the hardware has bf16 units
    # The teacher is frozen whatever the student's adapter: under bf16 it is stored in bf16 too (model.dtype auto).
    teacher_dtype = speed.weights_dtype(recipe, levers.bf16, frozen=True)
    teacher, teacher_tok, described = load_teacher(recipe.distill.teacher or "", teacher_dtype)
    if not same_tokenizer(tokenizer, teacher_tok):
        raise RecipeError(
            [
                (
                    "distill.mode",
                    "logits needs the teacher and the student to share a tokenizer; this teacher's differs: use mode: sequence",
                )
            ]
        )
    train_ex, eval_ex = recipe_examples(recipe)
    train_rows, train_stats = logit_rows(recipe, tokenizer, train_ex)
    eval_rows, eval_stats = logit_rows(recipe, tokenizer, eval_ex)

    torch.manual_seed(recipe.training.seed)
    model = policy.load(recipe, base_path, levers.base_dtype)
    trainer = GKDTrainer(
        model=model,
        teacher_model=teacher,
        args=_trl.build_gkd_config(recipe, run_dir, has_eval=True, speed=levers),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        processing_class=tokenizer,
        peft_config=policy.peft_config(recipe, model, base_path),
        callbacks=standard_callbacks(recipe, run_dir),
    )
    speed.apply_to_model(levers, trainer.model)
    result = faults.fit(trainer, recipe, checkpoint)  # trainer.train under the fault policy
    final_eval = trainer.evaluate()
    stats = {"train": train_stats, "eval": eval_stats}
    d = recipe.distill
    return finish_run(
        recipe,
        trainer,
        tokenizer,
        result,
        stats,
        st.started,
        checkpoint,
        base_path=base_path,
        final_eval=final_eval,
        extra={
            "distill": {
                "mode": "logits",
                "teacher": described,
                "teacher_spec": d.teacher,
                "beta": d.beta,
                "temperature": d.temperature,
                "lmbda": d.lmbda,
            },
            "speed": levers.as_dict(),
        },
    )


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Distil the teacher into the student (recipe.model + adapter) and return the run."""
    return _sequence(recipe, resume, force) if recipe.distill.mode == "sequence" else _logits(recipe, resume, force)
