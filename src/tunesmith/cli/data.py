"""`tunesmith data`: check, fix, split, convert, show and synthesize training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tunesmith.cli.base import app, console, err_console, handle_errors
from tunesmith.tables import Table

data_app = typer.Typer(help="Audit, fix, split, convert, preview and synthesize training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_SEV = {"error": "bold red", "warning": "yellow"}


def _tokenizer(spec: str | None, quiet: bool = False) -> tuple[Any, str]:
    """Tokenizer (and its model folder) for a model spec; the catalog default when none is given."""
    from tunesmith import models
    from tunesmith.config import DEFAULT_BASE

    spec = spec or DEFAULT_BASE
    if quiet:
        path = models.resolve_base(spec)
    else:
        with err_console.status(f"loading the tokenizer of {spec} ..."):
            path = models.resolve_base(spec)
    return models.load_tokenizer(path), path


def _settings(
    recipe: Path | None,
    model: str | None,
    max_length: int | None,
    overlong: str | None,
    method: str | None = None,
    completion_length: int | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """Model spec, max_length, policy, method, epochs and eval file: flags first, then the recipe, then the
    recipe's field defaults (`source` says which)."""
    from tunesmith.config import DataSection
    from tunesmith.train import methods

    out: dict[str, Any] = {
        "model": model,
        "max_length": max_length or DataSection.model_fields["max_length"].default,
        "overlong": overlong or "drop",
        "method": method or "sft",
        "completion_length": completion_length,  # None: the method's own (below)
        "reasoning": reasoning or "train",
        "packing": None,  # why the recipe's packed rows could attend to each other (audit.packing_leaks)
        "epochs": None,
        "adapter": "lora",
        "rows_per_step": 1,
        "max_steps": 0,
        "train": [],
        "eval": [],
        "source": "flags" if max_length else "default (no --recipe, no --max-length)",
    }
    cfg = None
    if recipe is not None:
        from tunesmith.config import load_recipe

        cfg = load_recipe(recipe)
        out.update(
            model=model or cfg.model.base,
            max_length=max_length or cfg.data.max_length,
            overlong=overlong or cfg.data.overlong,
            adapter=cfg.adapter.type,
            rows_per_step=cfg.training.batch_size * cfg.training.grad_accum,
            max_steps=max(cfg.training.max_steps, 0),
            method=method or cfg.method,
            epochs=cfg.training.epochs,
            train=list(cfg.data.train),
            eval=[cfg.data.eval] if cfg.data.eval else [],
            source=str(recipe),
            reasoning=reasoning or cfg.data.reasoning,
        )
        from tunesmith.data.audit import packing_leaks

        out["packing"] = packing_leaks(cfg, methods.get(cfg.method))
    out["recipe"] = cfg
    if out["method"] not in methods.names():
        from tunesmith.errors import DataError

        raise DataError(f"--method must be {', '.join(methods.names())}, not `{out['method']}`")
    out["completion_length"] = completion_length or methods.get(out["method"]).completion_room(cfg)
    if out["reasoning"] not in ("train", "mask", "drop"):
        from tunesmith.errors import DataError

        raise DataError(f"--reasoning must be train, mask or drop, not `{out['reasoning']}`")
    if out["overlong"] not in ("drop", "truncate", "error"):
        from tunesmith.errors import DataError

        raise DataError(f"--overlong must be drop, truncate or error, not `{out['overlong']}`")
    return out


def _trains_bf16(cfg: Any) -> bool:
    """Whether training on this CPU multiplies in bf16, as `tunesmith plan` decides it (a default recipe without one)."""
    from tunesmith.train import hardware, speed

    return speed.uses_bf16(cfg, cuda=False) if cfg is not None else hardware.bf16_units()


def _dist_row(table: Table, name: str, d: dict[str, Any]) -> None:
    table.add_row(name, *(str(d[k]) for k in ("min", "median", "p95", "max", "mean")))


def render_report(report: Any) -> None:
    """The audit as rich sections: findings by code, tokens, duplicates, balance, cost, verdict."""
    st = report.stats
    rows = st["rows"]
    console.rule("[bold]data check")
    console.print(f"files: {', '.join(report.files)}")
    console.print(
        f"rows: {rows['train']} read, {rows['train_usable']} usable"
        + (f" · eval {rows['eval']} read, {rows['eval_usable']} usable" if "eval" in rows else "")
        + f" · shapes {st['shapes']}",
        highlight=False,
    )
    groups = report.by_code()
    if groups:
        table = Table("code", "severity", "count", "first places", title="findings", title_justify="left")
        for code, g in groups.items():
            table.add_row(code, f"[{_SEV[g['severity']]}]{g['severity']}[/]", str(g["count"]), escape("\n".join(g["first"][:3])))
        console.print(table)
    if "tokens" in st:
        t = st["tokens"]
        table = Table(
            "per example", "min", "median", "p95", "max", "mean", title="tokens (chat template applied)", title_justify="left"
        )
        _dist_row(table, "total", t["total_tokens"])
        _dist_row(table, "trained (assistant)", t["assistant_tokens"])
        console.print(table)
        console.print(
            f"method {t.get('method', 'sft')}: measured as {t.get('measured_as', 'the rendered conversation')} · "
            f"over max_length {t['max_length']}: {t['n_too_long']} · dropped {t['dropped_overlong']} over-long, "
            f"{t['dropped_no_trained_tokens']} without trained tokens · tokens lost {t['tokens_lost']} · "
            f"pad == EOS: {t['pad_is_eos']} · {eos_line(t)}",
            highlight=False,
        )
    d = st["duplicates"]
    line = f"duplicates: {d['exact_duplicates']} exact, {d['near_duplicates']} near"
    if "overlap" in st:
        line += f" · train/eval overlap: {st['overlap']['eval_overlap']} exact, {st['overlap']['eval_near_overlap']} near"
    console.print(line)
    b = st["balance"]
    parts = [f"refusal-looking answers {b['refusals']} ({b['refusal_ratio']:.1%})"]
    if "label_counts" in b:
        parts.append(f"labels {b['label_counts']}")
    if "first_answer_token" in b:
        parts.append(f"first answer token {b['first_answer_token']}")
    console.print("balance: " + " · ".join(parts), highlight=False)
    if "cost" in st:
        _render_cost(st["cost"])
    if report.errors:
        console.print(f"[bold red]✗ {len(report.errors)} blocking error(s)[/], {len(report.warnings)} warning(s)")
    else:
        console.print(f"[bold green]✓ no blocking errors[/], {len(report.warnings)} warning(s)")


def eos_line(t: dict[str, Any]) -> str:
    """Whether EOS is trained, as counted from the loss masks of the audited rows (never assumed)."""
    checked, trained = t.get("eos_checked_rows", 0), t.get("eos_trained_rows", 0)
    if not checked:
        return (
            "EOS: no fixed answer is trained (completions are sampled)" if t.get("samples_completions") else "EOS: no kept rows"
        )
    colour = "green" if trained == checked else "yellow"
    return f"[{colour}]EOS trained in {trained} of {checked} kept rows[/]"


def _render_cost(c: dict[str, Any]) -> None:
    console.print(
        f"cost: {c['trained_tokens']:,} trained tokens ({c['trained_tokens_per_epoch']:,}/epoch × {c['epochs']} epochs, "
        f"{c['epochs_from']}); {c['processed_tokens']:,} tokens processed",
        highlight=False,
    )
    for key in ("gpu", "cpu"):
        if key in c:
            g = c[key]
            console.print(
                f"  {g['device']}: ~{g['tokens_per_s']:,} tokens/s → {g['hours'] * 60:.1f} min, "
                f"${g['cost_usd']:.2f} at ${g['price_per_hour']}/h",
                highlight=False,
            )
    if "assumption" in c:
        console.print(f"  [dim]assumed: {c['assumption']}[/]", highlight=False)


@data_app.command("check")
@handle_errors
def check(
    files: list[Path] = typer.Argument(None, help="Data files (default: the recipe's train files)."),
    recipe: Path = typer.Option(None, help="Recipe YAML: its files, model, max_length, policy and epochs."),
    model: str = typer.Option(None, help="Model whose tokenizer and chat template count tokens (default: the catalog default)."),
    max_length: int = typer.Option(None, min=1, help="Maximum tokens per example (default: the recipe's, else 1024)."),
    overlong: str = typer.Option(None, help="Over-length policy: drop (default) | truncate | error."),
    method: str = typer.Option(
        None,
        "--method",
        help="sft | dpo | grpo | distill: whose length contract the token checks apply (default: the recipe's, else sft).",
    ),
    completion_length: int = typer.Option(
        None,
        "--max-completion-length",
        min=1,
        help="grpo: tokens each prompt must leave for a completion (default: the recipe's, else 128).",
    ),
    reasoning: str = typer.Option(None, help="Reasoning traces: train, mask or drop (default: the recipe's, else train)."),
    eval_files: list[Path] = typer.Option([], "--eval", help="Eval file(s): also audited, and checked for overlap with train."),
    label_field: str = typer.Option(None, help="Row field whose value distribution is checked for balance."),
    strict: bool = typer.Option(False, help="Treat warnings as blocking (exit 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    html: Path = typer.Option(None, "--html", help="Also write an HTML report with length histograms."),
    gpu: str = typer.Option(
        "h100", help="GPU for the time/cost estimate: h100 | a100 | l4 | rtx4090 | cpu (`tunesmith plan`'s)."
    ),
    price_per_hour: float = typer.Option(None, min=0, help="USD per hour for that GPU (default: an assumed on-demand rate)."),
    epochs: float = typer.Option(
        None, min=0.001, help="Epochs for the cost estimate (default: the recipe's, else OpenAI's rule)."
    ),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip the token checks (no tokenizer is loaded)."),
    near_threshold: float = typer.Option(
        0.8, min=0.0, max=1.0, help="MinHash Jaccard similarity from which rows are near-duplicates."
    ),
) -> None:
    """Audit data files: blocking errors vs warnings, each with file, line and message index. Exit 0 clean, 1 errors, 2 unreadable."""
    from tunesmith.data import stats
    from tunesmith.data.audit import audit
    from tunesmith.errors import DataError
    from tunesmith.plan.cost import GPUS

    s = _settings(recipe, model, max_length, overlong, method, completion_length, reasoning)
    train = [str(f) for f in files] if files else s["train"]
    if not train:
        raise DataError("no data files given", hint="Pass FILE... or --recipe RECIPE.")
    if gpu not in (*GPUS, "cpu"):
        raise DataError(f"unknown --gpu `{gpu}`", hint=f"Known: {', '.join([*GPUS, 'cpu'])}")
    tokenizer, cost = None, None
    if not no_tokens:
        tokenizer, path = _tokenizer(s["model"], quiet=as_json)
        cost = dict(
            params=stats.count_params(path),
            gpu=gpu,
            price_per_hour=price_per_hour,
            epochs=epochs if epochs is not None else s["epochs"],
            adapter=s["adapter"],
            bf16=_trains_bf16(s["recipe"]),
            rows_per_step=s["rows_per_step"],
            max_steps=0 if epochs is not None else s["max_steps"],  # --epochs replaces the recipe's run length
        )
    evals = [str(f) for f in eval_files] or (s["eval"] if not files else [])
    from tunesmith.train import methods

    report = audit(
        train,
        evals,
        tokenizer,
        s["max_length"],
        s["overlong"],
        label_field,
        near_threshold,
        cost=cost,
        method=methods.get(s["method"]),
        completion_budget=s["completion_length"],
        reasoning=s["reasoning"],
    )
    if s["packing"] is not None:
        from tunesmith.data.checks import finding

        report.findings.append(finding("packed_rows_attend", str(recipe), None, s["packing"]))
    keys = ("method", "max_length", "overlong", "completion_length", "reasoning", "source")
    report.stats["settings"] = {k: s[k] for k in keys}
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=1, default=str))
    else:
        render_report(report)
        if not no_tokens:
            console.print(
                f"[dim]settings: method {s['method']}, max_length {s['max_length']}, overlong {s['overlong']}"
                f"{', max_completion_length ' + str(s['completion_length']) if s['completion_length'] else ''} "
                f"(from {s['source']})[/]",
                highlight=False,
            )
    if html is not None:
        from tunesmith.data.html import write_html
        from tunesmith.outputs import claim_file, record_file

        claim_file(html, inputs=train + evals, overwrite=True, what="--html")  # replaces only its own earlier report
        write_html(html, report)
        record_file(html)
        if not as_json:
            console.print(f"html report: {html}")
    if report.unreadable:
        raise typer.Exit(2)
    if report.blocking(strict):
        raise typer.Exit(1)


@data_app.command("fix")
@handle_errors
def fix(
    file: Path = typer.Argument(..., help="Data file to clean (never modified)."),
    out: Path = typer.Option(..., "--out", help="Where to write the cleaned copy (format from the extension)."),
    recipe: Path = typer.Option(None, help="Recipe YAML: model, max_length and policy for the token checks."),
    model: str = typer.Option(None, help="Model whose tokenizer drops over-long rows (default: the catalog default)."),
    max_length: int = typer.Option(None, min=1, help="Maximum tokens per example (default: the recipe's, else 1024)."),
    overlong: str = typer.Option(None, help="Over-length policy: drop (default) | truncate (rows kept) | error (dropped)."),
    against: list[Path] = typer.Option([], help="Training file(s): drop rows that also appear there (exactly or nearly)."),
    keep_near_duplicates: bool = typer.Option(False, help="Drop exact duplicates only."),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip the token checks."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out when an earlier tunesmith command wrote it (unedited)."
    ),
) -> None:
    """Write a cleaned copy: repair what can be repaired, drop what the check flags; print what was done."""
    from tunesmith.data.fix import fix_file

    s = _settings(recipe, model, max_length, overlong)
    tokenizer = None if no_tokens else _tokenizer(s["model"])[0]
    res = fix_file(
        file,
        out,
        tokenizer,
        s["max_length"],
        "drop" if s["overlong"] == "error" else s["overlong"],
        [str(a) for a in against],
        near=not keep_near_duplicates,
        overwrite=overwrite,
    )
    for line in res.actions[:200]:
        console.print(line, highlight=False, markup=False)
    if len(res.actions) > 200:
        console.print(f"... and {len(res.actions) - 200} more")
    table = Table("action", "code", "rows", title="fix", title_justify="left")
    for code, n in sorted(res.dropped.items()):
        table.add_row("[red]dropped[/]", code, str(n))
    for name, n in sorted(res.repaired.items()):
        table.add_row("[yellow]repaired[/]", name, str(n))
    console.print(table)
    console.print(
        f"[green]wrote[/] {out}: {res.rows_out} of {res.rows_in} rows kept "
        f"({sum(res.dropped.values())} dropped, {sum(res.repaired.values())} repairs)"
    )


@data_app.command("split")
@handle_errors
def split(
    file: Path = typer.Argument(..., help="Data file to split."),
    eval_fraction: float = typer.Option(0.1, "--eval", help="Fraction held out for eval."),
    seed: int = typer.Option(42, help="Seed: the same seed and content give the same split."),
    stratify: str = typer.Option(None, help="Row field to stratify by (each value split with the same fraction)."),
    out_dir: Path = typer.Option(None, help="Folder for the two files (default: next to FILE)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the two files when an earlier split wrote them (unedited)."
    ),
) -> None:
    """Deterministic, deduplicated train/eval split: writes FILE-stem.train.EXT and FILE-stem.eval.EXT."""
    from tunesmith.data.split import split_file

    res = split_file(file, eval_fraction, seed, stratify, out_dir, overwrite=overwrite)
    console.print(
        f"[green]wrote[/] {res.train} ({res.n_train} rows) and {res.eval} ({res.n_eval} rows); "
        f"dropped {res.dropped_exact_duplicates} exact duplicates and {res.dropped_invalid} invalid rows; "
        f"{res.near_duplicate_groups} near-duplicate groups kept on one side",
        highlight=False,
    )
    for value, counts in res.strata.items():
        console.print(f"  {stratify}={value}: train {counts['train']}, eval {counts['eval']}", highlight=False)


@data_app.command("convert")
@handle_errors
def convert(
    file: Path = typer.Argument(..., help="Data file to convert."),
    to: str = typer.Option(
        ..., help="Target shape: messages | sharegpt | alpaca | prompt_completion | preference | openai_dpo | prompt_only."
    ),
    out: Path = typer.Option(..., "--out", help="Output file (format from the extension: .jsonl .json .parquet .csv, + .gz)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out when an earlier tunesmith command wrote it (unedited)."
    ),
) -> None:
    """Convert rows between shapes; rows that cannot be expressed in the target are skipped and counted."""
    from tunesmith.data.convert import TARGETS, convert_file
    from tunesmith.errors import DataError

    if to not in TARGETS:
        raise DataError(f"unknown --to `{to}`", hint=f"Choose one of {', '.join(TARGETS)}.")
    res = convert_file(file, out, to, overwrite=overwrite)
    for line in res.skipped_rows[:20]:
        console.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    skipped = ", ".join(f"{n} {code}" for code, n in res.skipped.items()) or "none"
    console.print(f"[green]wrote[/] {out}: {res.converted} rows as {to}; skipped: {skipped}", highlight=False)
    if res.tools:
        t = res.tools
        console.print(
            f"tools: {t['rows_with_tools']} row(s) offer tools, {t['calls']} call(s), {t['results']} result(s) converted",
            highlight=False,
        )


@data_app.command("show")
@handle_errors
def show(
    file: Path = typer.Argument(..., help="Data file."),
    row: int = typer.Option(1, "--row", min=1, help="Row number (1-based, blank lines not counted)."),
    recipe: Path = typer.Option(None, help="Recipe YAML: its model, max_length and policy."),
    model: str = typer.Option(None, help="Model whose chat template renders the row (default: the catalog default)."),
    max_length: int = typer.Option(None, min=1, help="Maximum tokens (default: the recipe's, else 1024)."),
    reasoning: str = typer.Option(None, help="Reasoning traces: train, mask or drop (default: the recipe's, else train)."),
) -> None:
    """Render one row through the chat template exactly as training sees it; trained (loss) tokens highlighted
    (in a terminal) or between [[ and ]] (when the output is not a terminal)."""
    from rich.text import Text

    from tunesmith.data.show import counts_line, nth_record, plain, show_row

    s = _settings(recipe, model, max_length, None, reasoning=reasoning)
    rec = nth_record(file, row)
    tokenizer, _ = _tokenizer(s["model"])
    shown = show_row(tokenizer, rec, s["max_length"], s["overlong"], reasoning=s["reasoning"])
    console.rule(f"{shown.where}")
    for problem in shown.problems:
        err_console.print(f"[bold red]{escape(problem)}[/]", highlight=False)
    if console.is_terminal:
        text = Text()
        for segment, trained in shown.segments:
            text.append(segment, style="bold black on green" if trained else "dim")
        console.print(text)
    else:
        typer.echo(plain(shown))
    console.rule()
    state = f"dropped ({shown.dropped})" if shown.dropped else f"{shown.kept_tokens} tokens reach training"
    marked = "[black on green]highlighted[/]" if console.is_terminal else "between \\[[ and ]]"
    console.print(
        f"{shown.n_tokens} tokens, {shown.n_trained} trained ({marked}); "
        f"EOS trained: {shown.eos_trained}; max_length {s['max_length']}: {state}",
        soft_wrap=True,
    )
    console.print(escape(counts_line(shown)), highlight=False, soft_wrap=True)
    if not shown.segments:  # the row could not be read or normalised: nothing of it reaches training
        raise typer.Exit(1)


@data_app.command("synth")
@handle_errors
def synth(
    seed_file: Path = typer.Option(..., "--seed-file", help="Seed examples the model imitates."),
    model: str = typer.Option(..., help="Generator: a run folder (base + adapter), model folder, .gguf or catalog name."),
    n: int = typer.Option(200, "--n", min=1, help="Examples to accept."),
    out: Path = typer.Option(..., "--out", help="Where to write accepted examples."),
    schema: Path = typer.Option(None, help="JSON schema file the answer (last assistant message, parsed as JSON) must match."),
    max_length: int = typer.Option(1024, min=1, help="Maximum tokens per accepted example."),
    max_new_tokens: int = typer.Option(256, min=1, help="Generation budget per candidate."),
    batch_size: int = typer.Option(8, min=1, help="Candidates generated together."),
    max_attempts: int = typer.Option(None, min=1, help="Stop after this many candidates (default 4 x N)."),
    seed: int = typer.Option(0, help="Seed for which seed examples each prompt shows."),
) -> None:
    """Generate synthetic examples from seeds; keep only candidates that pass validation; report rejections by reason."""
    from tunesmith.data.convert import write_rows
    from tunesmith.data.synth import load_generator, load_schema, load_seeds, synthesize
    from tunesmith.errors import DataError
    from tunesmith.outputs import claim_file, record_file

    claim_file(out, inputs=[seed_file])  # every refusal comes before paying for the model and any generation
    left_out: list[str] = []
    seeds = load_seeds(seed_file, left_out)
    schema_obj = load_schema(schema) if schema else None
    if left_out:
        err_console.print(f"[yellow]left out {len(left_out)} seed row(s):[/] " + escape("; ".join(left_out[:5])), highlight=False)
    with err_console.status(f"loading {model} ..."):
        gen_model, tokenizer = load_generator(model)
    with err_console.status("generating ...") as status:
        res = synthesize(
            gen_model,
            tokenizer,
            seeds,
            n,
            schema_obj,
            max_length,
            max_new_tokens,
            batch_size,
            max_attempts=max_attempts,
            seed=seed,
            on_batch=lambda ok, tried: status.update(f"generating ... {ok} accepted of {tried}"),
        )
    table = Table("verdict", "count", "example output", title=f"synth: {res.attempts} candidates", title_justify="left")
    table.add_row("[green]accepted[/]", str(len(res.accepted)), "")
    for reason, count in res.rejected.most_common():
        table.add_row(f"[red]{reason}[/]", str(count), escape(res.examples.get(reason, "")[:80]))
    console.print(table)
    if not res.accepted:
        raise DataError(
            f"none of {res.attempts} candidates passed validation; {out} was not written",
            hint="See the rejections above: try more --max-attempts, a larger --max-new-tokens, or a stronger --model.",
        )
    write_rows(out, res.accepted)
    record_file(out)
    console.print(f"[green]wrote[/] {out}: {len(res.accepted)} of {n} requested")
    if len(res.accepted) < n:
        err_console.print(f"[yellow]warning:[/] only {len(res.accepted)} of {n} candidates passed validation")
