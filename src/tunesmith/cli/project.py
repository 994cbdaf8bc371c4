"""Terminal rendering of `tunesmith init --data`: the format found, the audit in brief, the choices made."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from tunesmith.cli.base import console


def print_project(p: Any) -> None:
    """What init found in the data and what it chose, then the next commands."""
    report = p.audit
    shapes = ", ".join(f"{n} {shape}" for shape, n in p.shapes.items()) or "no usable rows"
    console.print(f"format detected: {shapes}", highlight=False)
    t = report.stats.get("tokens", {})
    if t:
        d = t["total_tokens"]
        console.print(
            f"tokens per example ({t.get('measured_as', 'rendered')}): median {d['median']}, p95 {d['p95']}, "
            f"max {d['max']} · max_length {p.max_length}: {p.n_over} over (dropped, counted)",
            highlight=False,
        )
    for code, g in list(report.by_code().items())[:8]:
        colour = "bold red" if g["severity"] == "error" else "yellow"
        console.print(f"  [{colour}]{g['severity']}[/] {code} x{g['count']}: {escape(g['first'][0])}", highlight=False)
    verdict = (
        f"[bold red]{len(report.errors)} blocking error(s)[/]: fix them (tunesmith data fix) before training"
        if report.errors
        else f"[green]no blocking errors[/], {len(report.warnings)} warning(s)"
    )
    console.print(f"audit: {verdict}")
    ev = f"your eval file ({p.n_eval} rows)" if p.eval_from == "file" else f"{p.n_eval} rows held out of {p.n_train + p.n_eval}"
    s = p.schedule
    console.print(f"eval split: {ev}", highlight=False)
    console.print(
        f"schedule from the data: {s['epochs']:g} epochs over {p.n_train} rows (~{p.steps} steps), "
        f"lr {s['learning_rate']:g}, warm-up {s['warmup_ratio']:.0%}; eval.max_new_tokens auto",
        highlight=False,
    )
    console.print(
        f"[green]wrote[/] {p.recipe}\nnext: tunesmith data check --recipe {p.recipe} · tunesmith train {p.recipe}",
        highlight=False,
    )
