"""The OpenAI-compatible HTTP API (FastAPI): chat and text completions, models, adapters, feedback, health, metrics.

The model loads in a background thread after the server starts, so /health can say "loading";
it turns ready only once a one-token generation succeeded and, with the deploy check on, every
adapter answered the run's golden prompts as eval recorded. Every error is OpenAI-shaped JSON.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import TunesmithError
from tunesmith.serve.batching import Batcher, Params
from tunesmith.serve.check import deploy_check
from tunesmith.serve.handlers import Call, complete
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.rollout import Rollouts
from tunesmith.serve.schemas import (
    AdapterRequest,
    ApiError,
    FeedbackRequest,
    parse_body,
    read_body,
    validation_error,
)
from tunesmith.serve.security import KeyRing, contained_path, generate_key
from tunesmith.serve.store import FailedRequest, FeedbackRow, UnknownRequest, log_metrics
from tunesmith.verify.paths import engine_parity

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """How the server behaves (times in seconds, sizes in requests or tokens)."""

    keys: KeyRing = field(default_factory=KeyRing)
    max_queue: int = 64
    max_batch: int = 8
    batching: bool = True
    timeout_s: float = 300.0
    default_max_tokens: int = 256
    log_content: bool = True
    index: str | None = None
    adapters_dir: Path | None = None
    check: bool = False
    check_url: str | None = None  # where the deploy check reaches this server (set by the CLI)
    serve_dir: Path | None = None  # its rollouts/ folder is watched (serve/rollout.py); None: no rollouts
    rollout_poll_s: float = 1.0


@dataclass
class ServeState:
    settings: ServeSettings
    metrics: ServeMetrics
    store: Any = None
    engine: Any = None
    batcher: Any = None
    ready: bool = False
    status: str = "loading"
    problem: str | None = None
    check_report: Any = None
    retrieval_problem: str | None = None  # set when a search failed after startup, cleared by the next success
    internal_key: str = field(default_factory=generate_key)
    rollouts: Any = None  # serve.rollout.Rollouts when the server has a serve folder

    @property
    def healthy(self) -> bool:
        """Ready, and the last retrieval (if any) could search: what /health reports."""
        return self.ready and self.retrieval_problem is None


def _startup(state: ServeState, load: Callable[[], Any]) -> None:
    """Load, warm up, optionally deploy-check; sets state.ready or state.problem (runs in a thread)."""
    from tunesmith.serve.retrieval import check_indexes

    try:
        engine = load()
        state.status = "checking retrieval indexes"
        check_indexes(list(engine.models.values()), state.settings.index)  # before any request may use one
        state.batcher = Batcher(
            engine,
            max_batch=state.settings.max_batch,
            max_queue=state.settings.max_queue,
            batching=state.settings.batching,
            timeout_s=state.settings.timeout_s,
            metrics=state.metrics,
        )
        state.engine = engine
        for served in engine.models.values():
            if served.template_warning:
                log.warning("%s: %s", served.name, served.template_warning)
        state.status = "warming up"
        engine.generate_batch(engine.default_name, [[{"role": "user", "content": "hi"}]], Params(max_tokens=1))
        if state.settings.check:
            state.status = "checking"
            url = state.settings.check_url or "http://127.0.0.1:8000"
            state.check_report = report = deploy_check(url, state.internal_key, list(engine.models.values()))
            if not report.passed:
                state.status, state.problem = "check failed", report.summary()
                log.error("deploy check failed: %s", state.problem)
                return
            differ = engine_parity(engine)  # each served run's prompt bytes and stop tokens, against its training
            if differ:
                state.status, state.problem = "check failed", "; ".join(d.message() for d in differ[:3])
                log.error("parity check failed: %s", state.problem)
                return
        state.ready, state.status = True, "ready"
        state.metrics.ready.set(1)
    except TunesmithError as exc:
        state.status, state.problem = "failed", str(exc)
        log.error("serve could not start: %s", exc)
    except Exception as exc:
        log.exception("serve could not start")
        state.status, state.problem = "failed", f"{type(exc).__name__}: {exc}"


def create_app(load: Callable[[], Any], settings: ServeSettings, store: Any = None) -> FastAPI:
    """The API for the engine `load()` returns (called once, in a background thread at startup)."""
    state = ServeState(settings, ServeMetrics(), store)
    if store is not None:
        log_metrics(state.metrics.registry, store)
    settings.keys.user.append(KeyRing.build([state.internal_key], []).user[0])  # the deploy check calls in with it
    if settings.serve_dir is not None:
        state.rollouts = Rollouts(settings.serve_dir, state.metrics.registry, settings.rollout_poll_s, settings.timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=_startup, args=(state, load), name="tunesmith-load", daemon=True)
        thread.start()
        if state.rollouts is not None:
            state.rollouts.start(state)
        yield
        if state.rollouts is not None:
            state.rollouts.stop()
        if state.batcher is not None:
            state.batcher.stop()

    app = FastAPI(title="tunesmith serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tunesmith = state
    _errors(app, state)
    _routes(app, state)
    return app


def _errors(app: FastAPI, state: ServeState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.errors.labels("invalid_request").inc()
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        state.metrics.errors.labels("server_error").inc()
        return ApiError(500, "internal server error (see the server log)", "server_error").response()


def _routes(app: FastAPI, state: ServeState) -> None:
    def user(request: Request) -> None:
        if not state.settings.keys.allows(request.headers.get("authorization")):
            state.metrics.errors.labels("invalid_api_key").inc()
            raise ApiError(
                401, "missing or invalid API key (send Authorization: Bearer KEY)", "authentication_error", code="invalid_api_key"
            )

    def admin(request: Request) -> None:
        user(request)
        if not state.settings.keys.allows_admin(request.headers.get("authorization")):
            raise ApiError(403, "this route needs an admin key", "permission_error", code="admin_key_required")

    def internal(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {state.internal_key}")

    def loaded() -> Any:
        if state.engine is None:
            raise ApiError(
                503,
                f"the model is not loaded ({state.status}){': ' + state.problem if state.problem else ''}",
                "server_error",
                code="not_ready",
                headers={"Retry-After": "5"},
            )
        return state.engine

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": state.status, "ready": state.healthy, "problem": state.problem or state.retrieval_problem}
        if state.check_report is not None:
            body["check"] = state.check_report.as_dict()
        if state.engine is not None:
            body["models"] = sorted(state.engine.models)
            body["queue_depth"] = state.batcher.depth if state.batcher is not None else 0
        if state.rollouts is not None and (rollouts := state.rollouts.describe()):
            body["rollouts"] = rollouts
        return JSONResponse(body, status_code=200 if state.healthy else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models", dependencies=[Depends(user)])
    async def list_models() -> dict[str, Any]:
        engine = loaded()
        data = [
            {
                "id": s.name,
                "object": "model",
                "created": 0,
                "owned_by": "tunesmith",
                "root": engine.base_name,
                "parent": None if s.peft_name is None else engine.base_name,
                "lineage": s.lineage(),
            }
            for s in engine.models.values()
            if state.rollouts is None or not state.rollouts.hides(s.name)
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", dependencies=[Depends(user)])
    async def chat(request: Request) -> Any:
        return await complete(state, request, Call("chat", logged=not internal(request)))

    @app.post("/v1/completions", dependencies=[Depends(user)])
    async def completions(request: Request) -> Any:
        return await complete(state, request, Call("completions", logged=not internal(request)))

    @app.post("/v1/feedback", dependencies=[Depends(user)])
    async def feedback(request: Request) -> dict[str, Any]:
        body = parse_body(await read_body(request), FeedbackRequest)
        if state.store is None:
            raise ApiError(400, "this server keeps no request log (started with --no-log)", code="no_request_log")
        calls = [c.model_dump() for c in body.tool_calls] if body.tool_calls else None
        row = FeedbackRow(request_id=body.request_id, rating=body.rating, correction=body.correction, tool_calls=calls)
        try:
            await run_in_threadpool(state.store.add_feedback, row)
        except UnknownRequest:
            raise ApiError(
                404,
                f"no logged request with id {body.request_id!r}",
                "not_found_error",
                param="request_id",
                code="request_not_found",
            ) from None
        except FailedRequest as exc:
            raise ApiError(400, exc.message, param="request_id", code="request_not_answered") from None
        if state.rollouts is not None:
            await run_in_threadpool(state.rollouts.feedback, state.store, row.request_id, row.rating)
        return {"id": row.feedback_id, "object": "feedback", "request_id": row.request_id}

    @app.post("/v1/adapters", dependencies=[Depends(admin)])
    async def add_adapter(request: Request) -> dict[str, Any]:
        body = parse_body(await read_body(request), AdapterRequest)
        engine = loaded()
        root = state.settings.adapters_dir
        if root is None:
            raise ApiError(
                400, "adapters cannot be added: the server has no adapters folder (--adapters-dir)", code="no_adapters_dir"
            )
        try:
            path = contained_path(root, body.path)
            served = await run_in_threadpool(_attach_checked, engine, body.name, path)
        except TunesmithError as exc:
            raise ApiError(400, str(exc), param="name" if "name" in str(exc) else "path", code="invalid_adapter") from None
        if served.template_warning:
            log.warning("%s: %s", served.name, served.template_warning)
        return {"id": served.name, "object": "model", "lineage": served.lineage()}

    @app.delete("/v1/adapters/{name}", dependencies=[Depends(admin)])
    async def remove_adapter(name: str) -> dict[str, Any]:
        engine = loaded()
        try:
            await run_in_threadpool(engine.remove_adapter, name)
        except TunesmithError as exc:
            raise ApiError(404, str(exc), "not_found_error", param="name", code="model_not_found") from None
        # Requests still queued for it are answered 404 (and logged) when the worker reaches them.
        return {"id": name, "object": "model", "deleted": True}


def _attach_checked(engine: Any, name: str, path: Path) -> Any:
    """engine.add_adapter, then the retrieval index its recipe trained with must search, else it is detached again."""
    from tunesmith.serve.retrieval import check_indexes

    served = engine.add_adapter(name, path)
    if served.rag is not None:
        try:
            check_indexes([served], None)
        except TunesmithError:
            engine.remove_adapter(name)
            raise
    return served
