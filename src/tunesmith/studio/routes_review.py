"""Blind review pages: start a round, judge items as A/B/tie/both bad, results once closed, export."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tunesmith.data.template import prompt_messages
from tunesmith.errors import RunError, TunesmithError
from tunesmith.run import load_run
from tunesmith.studio import review
from tunesmith.studio.render import page, resolve_run
from tunesmith.studio.runs import list_runs, predictions
from tunesmith.train.methods import held_out_examples

router = APIRouter()
MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id is a 422, not an overflow


def _store(run_dir: Path, create: bool = False) -> review.ReviewStore:
    """The run's review database; only starting a round creates it (pages and other forms never do)."""
    return review.ReviewStore.open(run_dir, create=create)


def conversations(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Example id -> prompt conversation (system + user turns) of the run's own held-out rows; empty when unreadable."""
    try:
        return {ex.id: prompt_messages(ex.messages) for ex in held_out_examples(load_run(run_dir))}
    except (TunesmithError, OSError):
        return {}


def new_round_items(run_dir: Path, other_dir: Path | None) -> tuple[list[review.ReviewItem], str, str]:
    """Items for a round: base vs tuned of this run, or this run's tuned vs another run's tuned answers."""
    rows = predictions(run_dir)
    if not rows:
        raise RunError(f"{run_dir.name} has no eval/predictions.jsonl yet", hint="Run `tunesmith eval` on it first.")
    convs = conversations(run_dir)
    if other_dir is None:
        return review.items_from_predictions(rows, convs), "base", "tuned"
    other = {str(r.get("id")): str(r.get("tuned", "")) for r in predictions(other_dir)}
    return review.items_from_predictions(rows, convs, other), run_dir.name, other_dir.name


@router.get("/review", response_class=HTMLResponse)
def review_home(request: Request, k: str) -> HTMLResponse:
    run_dir = resolve_run(request, k)
    rounds: list[review.ReviewRound] = []
    if review.db_path(run_dir).exists():
        store = _store(run_dir)
        try:
            rounds = store.rounds()
        finally:
            store.close()
    others = [r for r in list_runs(request.app.state.roots) if r.report is not None and r.dir != run_dir]
    return page(request, "review_home.html", k=k, run_name=run_dir.name, rounds=rounds, others=others)


@router.post("/review/new")
def review_new(request: Request, k: str = Form(...), other: str = Form(""), name: str = Form("")) -> RedirectResponse:
    run_dir = resolve_run(request, k)
    other_dir = resolve_run(request, other) if other.strip() else None
    items, lx, ly = new_round_items(run_dir, other_dir)
    store = _store(run_dir, create=True)
    try:
        rnd = store.create_round(name.strip() or time.strftime("round %Y-%m-%d %H:%M"), lx, ly, items)
    finally:
        store.close()
    return RedirectResponse(f"/review/round?k={k}&r={rnd.id}", status_code=303)


@router.get("/review/round", response_class=HTMLResponse)
def review_round(request: Request, k: str, r: int = Query(..., ge=0, le=MAX_ID), reviewer: str = "") -> HTMLResponse:
    run_dir = resolve_run(request, k)
    store = _store(run_dir)
    try:
        rnd = store.round(r)
        if rnd.closed or not reviewer.strip():
            return page(request, "review_round.html", k=k, rnd=rnd, reviewer=reviewer, item=None)
        item, done, total = store.next_item(r, reviewer)
        a, b = store.shown(item, reviewer) if item else ("", "")
    finally:
        store.close()
    return page(request, "review_round.html", k=k, rnd=rnd, reviewer=reviewer, item=item, a=a, b=b, done=done, total=total)


@router.post("/review/verdict")
def review_verdict(
    request: Request,
    k: str = Form(...),
    r: int = Form(..., ge=0, le=MAX_ID),
    item: int = Form(..., ge=0, le=MAX_ID),
    reviewer: str = Form(...),
    choice: str = Form(...),
    correction: str = Form(""),
) -> RedirectResponse:
    run_dir = resolve_run(request, k)
    store = _store(run_dir)
    try:
        store.record(store.item(r, item), reviewer, choice, correction)
    finally:
        store.close()
    from urllib.parse import quote

    return RedirectResponse(f"/review/round?k={quote(k)}&r={r}&reviewer={quote(reviewer.strip())}", status_code=303)


@router.post("/review/close")
def review_close(request: Request, k: str = Form(...), r: int = Form(..., ge=0, le=MAX_ID)) -> RedirectResponse:
    store = _store(resolve_run(request, k))
    try:
        store.close_round(r)
    finally:
        store.close()
    return RedirectResponse(f"/review/results?k={k}&r={r}", status_code=303)


@router.get("/review/results", response_class=HTMLResponse)
def review_results(request: Request, k: str, r: int = Query(..., ge=0, le=MAX_ID), min_agree: int = 1) -> HTMLResponse:
    store = _store(resolve_run(request, k))
    try:
        rnd = store.round(r)
        if not rnd.closed:  # results name the sides, so they wait until the round is closed
            return page(request, "review_round.html", k=k, rnd=rnd, reviewer="", item=None, must_close=True)
        items, verdicts = store.items(r), store.verdicts(r)
    finally:
        store.close()
    stats = review.compute_stats(items, verdicts, max(1, min_agree))
    by_id = {i.id: i for i in items}
    disputed = [(by_id[i], [v for v in verdicts if v.item_id == i]) for i in stats.disagreements if i in by_id]
    return page(request, "review_results.html", k=k, rnd=rnd, stats=stats, disputed=disputed, export=None)


@router.post("/review/export", response_class=HTMLResponse)
def review_export(
    request: Request, k: str = Form(...), r: int = Form(..., ge=0, le=MAX_ID), to: str = Form(...), min_agree: int = Form(1)
) -> HTMLResponse:
    run_dir = resolve_run(request, k)
    store = _store(run_dir)
    try:
        rnd = store.round(r)
        if not rnd.closed:
            raise RunError("close the round before exporting it")
        items, verdicts = store.items(r), store.verdicts(r)
    finally:
        store.close()
    rows = review.export_rows(items, verdicts, to, max(1, min_agree))
    out = run_dir / "review" / f"round{r}-{to}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    summary = review.write_export(rows, out)
    stats = review.compute_stats(items, verdicts, max(1, min_agree))
    return page(request, "review_results.html", k=k, rnd=rnd, stats=stats, disputed=[], export=summary)
