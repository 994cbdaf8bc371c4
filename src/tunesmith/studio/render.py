"""What every studio page module shares: rendering a template and finding the run a URL names (app.py and the
routes_*.py modules import these, so the route modules do not import the app that includes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from tunesmith.errors import RunError
from tunesmith.studio.runs import Roots


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
