"""The studio web app: FastAPI with server-rendered Jinja2 pages (autoescaped), reading the typed run records.

`create_app(StudioConfig)` builds it; pages are split by area (runs and reports here, review in
routes_review.py, launch/chat/data/monitor in routes_work.py). Every page addresses a file by
`k=<root index>/<relative path>`, resolved by `Roots.resolve`, so nothing outside the given folders
is readable through any URL. With an access token, every request must carry it (cookie, header or
`?token=` once), compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tunesmith.errors import RunError, TunesmithError
from tunesmith.studio import reports
from tunesmith.studio.runs import Roots, checkpoints, faults, job_state, list_runs, summarize

HERE = Path(__file__).parent
COOKIE = "tunesmith_studio_token"


@dataclass
class StudioConfig:
    runs: list[Path]
    data: list[Path] = field(default_factory=list)
    serve_dir: Path | None = None
    token: str | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without an access token."""
    if not is_loopback(host) and not token:
        raise RunError(
            f"refusing to bind {host} without an access token",
            hint="Pass --token (or set TUNESMITH_STUDIO_TOKEN), or keep the default --host 127.0.0.1.",
        )


def page(request: Request, template: str, /, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """Render a template from pages/ (autoescaped) with `ctx`."""
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, ctx, status_code=status_code)


def resolve_run(request: Request, k: str) -> Path:
    """The run folder named by `k`; RunError (a 404 page) when it is outside the roots or not a run."""
    roots: Roots = request.app.state.roots
    path = roots.resolve(k)
    if not (path / "run.yaml").is_file():
        raise RunError("not a run folder")
    return path


def create_app(config: StudioConfig) -> FastAPI:
    import tunesmith.eval.metrics  # noqa: F401  (seconds of imports paid at start-up, not by the first page)

    app = FastAPI(title="tunesmith studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.roots = Roots([*config.runs, *config.data])
    app.state.run_roots = len(config.runs)
    app.state.templates = Jinja2Templates(directory=str(HERE / "pages"))  # .html templates: autoescape on
    app.state.templates.env.globals["ladder_bars"] = reports.ladder_bars
    for name in app.state.templates.env.list_templates():  # compile once now, not on each page's first visit
        app.state.templates.env.get_template(name)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def token_gate(request: Request, call_next: Any) -> Response:
        if config.token and not request.url.path.startswith("/static"):
            given = (
                request.query_params.get("token")
                or request.cookies.get(COOKIE)
                or request.headers.get("authorization", "").removeprefix("Bearer ")
            )
            if not hmac.compare_digest(given.encode(), config.token.encode()):
                return HTMLResponse("<h1>401</h1><p>This studio needs its access token: open it with ?token=...</p>", 401)
            response: Response = await call_next(request)
            if request.query_params.get("token"):
                response.set_cookie(COOKIE, config.token, httponly=True, samesite="strict")
            return response
        passed: Response = await call_next(request)
        return passed

    @app.exception_handler(TunesmithError)
    async def not_found(request: Request, exc: TunesmithError) -> HTMLResponse:
        return page(request, "error.html", 404, message=exc.message, hint=exc.hint)

    from tunesmith.studio import routes_review, routes_work

    _runs_routes(app)
    app.include_router(routes_review.router)
    app.include_router(routes_work.router)
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
        from tunesmith.run import read_metrics

        run_dir = resolve_run(request, k)
        s = summarize(run_dir, request.app.state.roots)
        metrics = read_metrics(run_dir)
        recipe_text = (run_dir / "run.yaml").read_text(encoding="utf-8")
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
        shown, total = reports.report_page(run_dir, max(1, page_no), losses, metric)
        pages = max(1, math.ceil(total / reports.PAGE_SIZE))
        if page_no > pages:  # past the end (e.g. a filter shrank the list): show the last page
            page_no = pages
            shown, total = reports.report_page(run_dir, page_no, losses, metric)
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
            ladder=reports.ladder(run_dir),
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}
