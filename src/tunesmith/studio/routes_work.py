"""Launch (audit, recipe, train subprocess, live progress, stop, resume), chat playground, data audit browse, monitor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from tunesmith import models
from tunesmith.config import DEFAULT_BASE, Recipe, commented_yaml
from tunesmith.data.formats import read_records
from tunesmith.errors import RunError, TunesmithError
from tunesmith.models import CATALOG
from tunesmith.monitor.loop import cycles
from tunesmith.monitor.report import latest
from tunesmith.serve.store import DB_NAME, RequestLog, is_url
from tunesmith.studio import launch
from tunesmith.studio.chat import ChatRequest, ModelCache, stream_reply
from tunesmith.studio.confine import model_problem
from tunesmith.studio.render import page, resolve_run
from tunesmith.studio.runs import SKIP_DIRS, list_runs
from tunesmith.studio.synth_review import SynthReview
from tunesmith.train.sft import METHOD as SFT

router = APIRouter()
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def data_files(request: Request, limit: int = 300) -> list[tuple[str, str]]:
    """(key, shown path) of data files under the studio's folders, outside run folders' own subfolders."""
    roots = request.app.state.roots
    out: list[tuple[str, str]] = []
    for root in roots.dirs:
        for path in sorted(root.rglob("*")):
            if len(out) >= limit:
                return out
            rel = path.relative_to(root)
            if any(p in SKIP_DIRS or p.startswith(".") for p in rel.parts[:-1]) or not path.name.endswith(DATA_SUFFIXES):
                continue
            if not path.resolve().is_relative_to(root):  # a symlink out of the roots is not listed either
                continue
            if path.is_file() and not (path.parent / "run.yaml").exists():  # a run's own records are not data
                out.append((roots.key(path), str(path)))
    reviewed = sorted(roots.studio_dir.glob("synth/*/accepted-*.jsonl"))  # rows accepted in a synthetic-data review
    return out + [(roots.key(p), str(p)) for p in reviewed][: max(0, limit - len(out))]


def _launcher(request: Request) -> launch.Launcher:
    state = request.app.state
    if getattr(state, "launcher", None) is None:
        state.launcher = launch.Launcher(state.roots.studio_dir)
    launcher: launch.Launcher = state.launcher
    return launcher


def _tokenizer(base: str) -> tuple[Any, str | None]:
    """The base model's tokenizer for the token checks, or (None, why not) when it is not available here."""
    try:
        return models.load_tokenizer(models.resolve_base(base)), None
    except (TunesmithError, OSError, ValueError) as exc:
        return None, f"token checks skipped: {getattr(exc, 'message', exc)}"


def field_help() -> list[tuple[str, str]]:
    """(field path, description) for every recipe field, from the recipe's JSON schema."""
    schema = Recipe.model_json_schema()
    defs = schema.get("$defs", {})
    out: list[tuple[str, str]] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, prop in node.get("properties", {}).items():
            ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("allOf", []) if "$ref" in a), None)
            out.append((prefix + name, prop.get("description", "")))
            if ref:
                walk(defs[ref.rsplit("/", 1)[-1]], f"{prefix}{name}.")

    walk(schema, "")
    return out


@router.get("/launch", response_class=HTMLResponse)
def launch_form(request: Request) -> HTMLResponse:

    return page(request, "launch.html", files=data_files(request), base=DEFAULT_BASE, audit=None, catalog=_catalog())


def _catalog() -> list[str]:

    return sorted(CATALOG)


@router.post("/launch/preview", response_class=HTMLResponse)
def launch_preview(
    request: Request,
    train: list[str] = Form(...),
    eval_file: str = Form(""),
    base: str = Form(...),
    method: str = Form("sft"),
    adapter: str = Form("lora"),
    name: str = Form("run"),
    max_steps: int = Form(-1),
) -> HTMLResponse:
    """The data audit (the same findings as `tunesmith data check`) and the recipe to edit, before anything trains."""
    from tunesmith.data.audit import audit

    roots = request.app.state.roots
    train_paths = [str(roots.resolve(k)) for k in train]
    eval_paths = [str(roots.resolve(eval_file))] if eval_file else []
    refused = model_problem(base, roots.dirs, request.app.state.config.models)
    tokenizer, note = (None, None) if refused else _tokenizer(base)
    report = audit(train_paths, eval_paths, tokenizer, method=SFT)  # the new run's recipe starts as SFT
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "run"
    values: dict[str, Any] = {
        "name": safe,
        "method": method,
        "model": {"base": base},
        "data": {"train": train_paths, **({"eval": eval_paths[0]} if eval_paths else {})},
        "adapter": {"type": adapter},
        "training": {"max_steps": max_steps},
        "output_dir": str(request.app.state.roots.dirs[0] / safe),
    }
    picked = {"train": set(train), "eval": eval_file, "method": method, "adapter": adapter, "name": safe, "max_steps": max_steps}
    return page(
        request,
        "launch.html",
        files=data_files(request),
        base=base,
        audit=report,
        note=note,
        picked=picked,
        recipe=commented_yaml(values),
        help=field_help(),
        error=f"model.base: {refused}" if refused else None,
        catalog=_catalog(),
    )


@router.post("/launch/start")
def launch_start(request: Request, recipe: str = Form(...)) -> Any:
    studio_dir = request.app.state.roots.studio_dir
    try:
        parsed = launch.validate_recipe(
            recipe, studio_dir / "recipes", request.app.state.roots.dirs, request.app.state.config.models
        )
    except TunesmithError as exc:
        return page(
            request,
            "launch.html",
            files=data_files(request),
            base=DEFAULT_BASE,
            audit=None,
            recipe=recipe,
            help=field_help(),
            error=exc.message,
            catalog=_catalog(),
            status_code=422,
        )
    run_dir = Path(parsed.output_dir)
    if (run_dir / "manifest.json").exists() or (run_dir / "checkpoints").exists():
        raise RunError(f"{run_dir} already holds a run", hint="Change name/output_dir, or resume it from its job page.")
    launcher = _launcher(request)
    launcher.start(launcher.save_recipe(recipe, parsed), run_dir)
    return RedirectResponse(f"/job?k={request.app.state.roots.key(run_dir)}", status_code=303)


@router.get("/job", response_class=HTMLResponse)
def job_page(request: Request, k: str) -> HTMLResponse:
    roots = request.app.state.roots
    run_dir = roots.resolve(k)
    job = launch.read_job(roots.studio_dir, run_dir)
    if job is None:
        raise RunError("no studio job for this folder")
    return page(request, "job.html", k=k, name=run_dir.name, job=job)


@router.get("/job/events")
def job_events(request: Request, k: str) -> StreamingResponse:
    roots = request.app.state.roots
    return StreamingResponse(
        launch.follow(roots.studio_dir, roots.resolve(k)), media_type="text/event-stream", headers=SSE_HEADERS
    )


@router.post("/job/stop")
def job_stop(request: Request, k: str = Form(...)) -> RedirectResponse:
    _launcher(request).stop(request.app.state.roots.resolve(k))
    return RedirectResponse(f"/job?k={k}", status_code=303)


@router.post("/job/resume")
def job_resume(request: Request, k: str = Form(...)) -> RedirectResponse:
    _launcher(request).resume(request.app.state.roots.resolve(k))
    return RedirectResponse(f"/job?k={k}", status_code=303)


@router.get("/chat", response_class=HTMLResponse)
def chat_page(request: Request, k: str = "") -> HTMLResponse:
    runs = [r for r in list_runs(request.app.state.roots) if r.status == "finished"]
    selected = next((r for r in runs if r.key == k), runs[0] if runs else None)
    has_rag = bool(selected and selected.manifest and selected.manifest.rag)
    return page(request, "chat.html", runs=runs, selected=selected, has_rag=has_rag)


@router.post("/chat/stream")
def chat_stream(request: Request, body: ChatRequest) -> StreamingResponse:
    """Stream a reply (server-sent events); a malformed body is a 422 naming the field, before anything loads."""
    run_dir = resolve_run(request, body.k)
    messages = [m.model_dump() for m in body.messages]
    if messages[-1]["role"] != "user":
        raise RunError("the conversation must end with a user message")
    state = request.app.state
    if getattr(state, "models", None) is None:
        state.models = ModelCache()
    stream = stream_reply(state.models, run_dir, messages, body.side, body.rag, body.max_new_tokens)
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/data", response_class=HTMLResponse)
def data_page(
    request: Request, k: str = "", model: str = "", reasoning: Literal["train", "mask", "drop"] = "train"
) -> HTMLResponse:
    """Browse a file's audit: findings grouped by code, each linked to its row; with a model (a catalog name or a
    folder inside the studio's folders), the token checks too and sampled rows as training sees them."""
    from markupsafe import Markup

    from tunesmith.data.audit import audit
    from tunesmith.data.html import rows_section

    report, path, note, rows = None, None, None, Markup("")
    if k:
        path = request.app.state.roots.resolve(k)
        if not path.is_file():
            raise RunError("not a data file")
        tokenizer = None
        if model:
            refused = model_problem(model, request.app.state.roots.dirs, request.app.state.config.models)
            tokenizer, note = (None, f"model: {refused}") if refused else _tokenizer(model)
        report = audit([str(path)], tokenizer=tokenizer, reasoning=reasoning, method=SFT)
        if report.samples:  # the same fragment as the audit's HTML report (every piece of data text escaped)
            rows = Markup(rows_section(report.samples))
    return page(
        request,
        "data.html",
        files=data_files(request),
        k=k,
        path=path,
        report=report,
        model=model,
        reasoning=reasoning,
        note=note,
        rows=rows,
        catalog=_catalog(),
    )


@router.get("/data/row", response_class=HTMLResponse)
def data_row(request: Request, k: str, line: int) -> HTMLResponse:
    path = request.app.state.roots.resolve(k)
    rec = next((r for r in read_records(str(path)) if r.line == line), None)
    if rec is None:
        raise RunError(f"no row at line {line}")
    text = json.dumps(rec.obj, indent=2, ensure_ascii=False) if not isinstance(rec.obj, str) else rec.obj
    return page(request, "data_row.html", k=k, path=path, line=line, text=text)


def _synth(request: Request, k: str, n: int, create: bool = True) -> Any:
    path = request.app.state.roots.resolve(k)
    if not path.is_file():
        raise RunError("not a data file")
    return SynthReview(path, request.app.state.roots.studio_dir, sample_size=max(1, min(n, 1000)), create=create)


@router.get("/data/synth", response_class=HTMLResponse)
def synth_page(request: Request, k: str, n: int = 20) -> HTMLResponse:
    """Review a sample of synthetic rows: accept, reject with a reason, or edit."""
    review = _synth(request, k, n, create=False)  # looking changes nothing: the review starts with its first decision
    try:
        line = review.next_line()
        done = len(review.decisions())
        text = json.dumps(review.rows[line], indent=2, ensure_ascii=False) if line is not None else ""
        return page(
            request,
            "synth.html",
            k=k,
            n=n,
            path=review.source,
            line=line,
            text=text,
            done=done,
            total=len(review.sample),
            outcome=None,
        )
    finally:
        review.close()


@router.post("/data/synth/decide")
def synth_decide(
    request: Request,
    k: str = Form(...),
    n: int = Form(20),
    line: int = Form(...),
    verdict: Literal["accept", "reject", "edit"] = Form(...),
    reason: str = Form(""),
    row: str = Form(""),
) -> RedirectResponse:
    from urllib.parse import quote

    review = _synth(request, k, n)
    try:
        review.decide(line, verdict, reason, row)
    finally:
        review.close()
    return RedirectResponse(f"/data/synth?k={quote(k)}&n={n}", status_code=303)


@router.post("/data/synth/write", response_class=HTMLResponse)
def synth_write(request: Request, k: str = Form(...), n: int = Form(20)) -> HTMLResponse:
    review = _synth(request, k, n)
    try:
        outcome = review.write_accepted()
        return page(
            request,
            "synth.html",
            k=k,
            n=n,
            path=review.source,
            line=None,
            text="",
            done=len(review.decisions()),
            total=len(review.sample),
            outcome=outcome,
        )
    finally:
        review.close()


@router.get("/monitor", response_class=HTMLResponse)
def monitor_page(request: Request, offset: int = 0) -> HTMLResponse:
    config = request.app.state.config
    serve_dir, source = config.serve_dir, config.log or (config.serve_dir and Path(config.serve_dir) / DB_NAME)
    if source is None:
        return page(request, "monitor.html", serve_dir=None, rows=[], feedback=[])
    if not is_url(source) and not Path(source).exists():
        return page(request, "monitor.html", serve_dir=serve_dir, rows=[], feedback=[], missing=str(source))
    with RequestLog.open(source) as log:  # read-only: a shared log is never changed by the studio
        rows = list(log.iter_requests())
        feedback = list(log.iter_feedback())
        where = log.location  # a URL's password masked
    buckets = hourly(rows)
    rows.reverse()

    return page(
        request,
        "monitor.html",
        serve_dir=serve_dir,
        rows=rows[offset : offset + 100],
        total=len(rows),
        offset=offset,
        feedback=feedback[-100:],
        buckets=buckets,
        log=where,
        drift=latest(serve_dir) if serve_dir else None,
        cycles=cycles(serve_dir) if serve_dir else [],
    )


@router.get("/monitor/cycle", response_class=HTMLResponse)
def cycle_page(request: Request, c: str = "", page: str = "cycle") -> HTMLResponse:
    """A `tunesmith loop` cycle's report (cycle.html) or its drift report (monitor.html); the monitor page without one."""
    import re

    serve_dir = request.app.state.config.serve_dir
    if serve_dir is None or not c:
        return monitor_page(request)
    if not re.fullmatch(r"\d{8}T\d{6}Z", c) or page not in ("cycle", "monitor"):
        raise RunError("no such loop cycle report")
    path = Path(serve_dir) / "loop" / c / f"{page}.html"
    if not path.is_file():
        raise RunError(f"no {page} report for the loop cycle {c}")
    html = path.read_text(encoding="utf-8").replace("href='monitor.html'", f"href='/monitor/cycle?c={c}&page=monitor'")
    return HTMLResponse(html)


def hourly(rows: list[Any]) -> list[dict[str, Any]]:
    """Drift signals per UTC hour: request count, errors, mean latency (s), mean prompt and completion tokens."""
    groups: dict[str, list[Any]] = {}
    for r in rows:
        groups.setdefault(r.time.strftime("%Y-%m-%d %H:00"), []).append(r)
    return [
        {
            "hour": hour,
            "n": len(g),
            "errors": sum(r.status >= 400 for r in g),
            "latency": sum(r.latency_s for r in g) / len(g),
            "prompt": sum(r.prompt_tokens for r in g) / len(g),
            "completion": sum(r.completion_tokens for r in g) / len(g),
        }
        for hour, g in sorted(groups.items())
    ]
