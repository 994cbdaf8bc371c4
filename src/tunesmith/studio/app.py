"""The studio web app: FastAPI with server-rendered Jinja2 pages (autoescaped), reading the typed run records.

`create_app(StudioConfig)` builds it; pages are split by area (runs and reports here, review in
routes_review.py, launch/chat/data/monitor in routes_work.py). Every page addresses a file by
`k=<root index>/<relative path>`, resolved by `Roots.resolve`, so nothing outside the given folders
is readable through any URL. `guard.py` checks every request first: the Host header, the access token
(with --token), and the origin and CSRF token of every state change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import tunesmith.eval.metrics  # noqa: F401  (its imports paid at start-up, not by the first page)
from tunesmith.errors import RunError, TunesmithError
from tunesmith.eval.registry import TOOL_METRICS
from tunesmith.studio import guard, reports
from tunesmith.studio.guard import is_loopback
from tunesmith.studio.render import page, resolve_run
from tunesmith.studio.runs import Roots, checkpoints, faults, job_state, list_runs, metric_rows, summarize

HERE = Path(__file__).parent
DEFAULT_PORT = 7860


@dataclass
class StudioConfig:
    """What `tunesmith studio` was given: the folders it may read, where it listens, its access token."""

    runs: list[Path]
    data: list[Path] = field(default_factory=list)
    serve_dir: Path | None = None
    log: str | None = None  # the request log Monitor reads instead of serve_dir's: a .sqlite file or postgresql:// URL
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_hosts: list[str] = field(default_factory=list)  # more names the Host header may carry (--allow-host)
    models: list[Path] = field(default_factory=list)  # folders holding base models a launch may name (--models)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without an access token."""
    if not is_loopback(host) and not token:
        raise RunError(
            f"refusing to bind {host} without an access token",
            hint="Pass --token (or set TUNESMITH_STUDIO_TOKEN), or keep the default --host 127.0.0.1.",
        )


def create_app(config: StudioConfig) -> FastAPI:
    app = FastAPI(title="tunesmith studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.roots = Roots([*config.runs, *config.data])
    app.state.run_roots = len(config.runs)
    app.state.templates = Jinja2Templates(directory=str(HERE / "pages"))  # .html templates: autoescape on
    app.state.templates.env.globals["ladder_bars"] = reports.ladder_bars
    for name in app.state.templates.env.list_templates():  # compile once now, not on each page's first visit
        app.state.templates.env.get_template(name)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    guard.install(app, guard.Guard(config.host, config.port, config.token, list(config.allow_hosts)))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        """A malformed query, form or body: 422 naming each bad field (never echoing the value, which may not even be
        JSON-encodable, e.g. 1e400)."""
        where = [".".join(str(p) for p in e["loc"] if p != "body") or "body" for e in exc.errors()]
        message = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, exc.errors(), strict=True))
        if guard.wants_json(request):
            return JSONResponse({"error": {"message": message, "fields": where, "status": 422}}, 422)
        return page(request, "error.html", 422, title="Not understood", message=message, hint="")

    @app.exception_handler(TunesmithError)
    async def not_found(request: Request, exc: TunesmithError) -> Response:
        if guard.wants_json(request):
            return JSONResponse({"error": {"message": exc.message, "hint": exc.hint or "", "status": 404}}, 404)
        return page(request, "error.html", 404, message=exc.message, hint=exc.hint)

    from tunesmith.studio import routes_review, routes_sweeps, routes_work

    _runs_routes(app)
    app.include_router(routes_review.router)
    app.include_router(routes_work.router)
    app.include_router(routes_sweeps.router)
    return app


def _runs_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        roots = request.app.state.roots
        runs = list_runs(Roots(roots.dirs[: request.app.state.run_roots]))
        for r in runs:
            r.key = roots.key(r.dir)
        return page(request, "runs.html", runs=runs, roots=roots.dirs[: request.app.state.run_roots])

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, k: str) -> HTMLResponse:
        run_dir = resolve_run(request, k)
        s = summarize(run_dir, request.app.state.roots)
        metrics, skipped = metric_rows(run_dir)
        if skipped:
            s.problem = "; ".join(filter(None, [s.problem, skipped]))
        recipe_text = (run_dir / "run.yaml").read_text(encoding="utf-8", errors="replace")
        manifest = s.manifest.model_dump_json(indent=2) if s.manifest else None
        curves = reports.loss_series(metrics)
        return page(
            request,
            "run.html",
            run=s,
            recipe=recipe_text,
            manifest=manifest,
            curves=curves,
            checkpoints=checkpoints(run_dir),
            faults=faults(metrics, s.manifest),
            lineage=reports.lineage(s),
            has_png=(run_dir / "loss.png").is_file(),
            has_job=job_state(run_dir, request.app.state.roots) is not None,
        )

    @app.get("/file")
    def file(request: Request, k: str) -> FileResponse:
        path = request.app.state.roots.resolve(k)
        if path.suffix.lower() != ".png" or not path.is_file():
            raise RunError("only PNG pictures inside the studio's folders are served")
        return FileResponse(path, media_type="image/png")

    @app.get("/report", response_class=HTMLResponse)
    def report_page(request: Request, k: str, page_no: int = 1, losses: bool = False, metric: str = "") -> HTMLResponse:
        run_dir = resolve_run(request, k)
        s = summarize(run_dir, request.app.state.roots)
        if s.report is None:
            return page(request, "report.html", run=s, report=None, ladder=reports.ladder(run_dir))
        try:
            shown, total = reports.report_page(run_dir, max(1, page_no), losses, metric)
            pages = max(1, math.ceil(total / reports.PAGE_SIZE))
            if page_no > pages:  # past the end (e.g. a filter shrank the list): show the last page
                page_no = pages
                shown, total = reports.report_page(run_dir, page_no, losses, metric)
        except RunError as exc:  # the summary still shows; the examples say why they cannot
            s.problem, shown, total, pages = exc.message, [], 0, 1
        return page(
            request,
            "report.html",
            run=s,
            report=s.report,
            rows=shown,
            total=total,
            page_no=max(1, page_no),
            pages=pages,
            losses=losses,
            metric=metric,
            metrics=reports.metric_names(s.report),
            tool_metrics=[m for m in TOOL_METRICS if any(m in f for f in s.report.per_tool.get("tuned", {}).values())],
            ladder=reports.ladder(run_dir),
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}
