"""What a completion request goes through: body, model lookup, retrieval, context check, queue, response, log row.

Chat and text completions share this path; they differ only in how the prompt arrives and how the
response is shaped. Every answer the path gives, errors included (a bad body, 404, 429, 499, 503, 504,
500), is written to the request log exactly once, before the response (or the stream's [DONE]) is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.data.reasoning import TraceStream, split_output
from tunesmith.errors import DataError
from tunesmith.eval.generate import family_of, opens_trace
from tunesmith.serve import responses
from tunesmith.serve.batching import Job, Params, QueueFull
from tunesmith.serve.engine import NoSuchModel
from tunesmith.serve.retrieval import retrieve
from tunesmith.serve.schemas import ApiError, ChatRequest, CompletionRequest, model_field, parse_body, read_body
from tunesmith.serve.store import (
    Message,
    RequestRow,
    SourceRef,
    new_request_id,
    now_utc,
)
from tunesmith.serve.tool_calls import ToolChoice, call_deltas, logged_calls, offered_tools, read_reply, tool_choice, tool_error

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One request on its way through: what was asked, what it became, and what came back."""

    kind: str  # "chat" | "completions"
    body: Any = None  # ChatRequest | CompletionRequest once the body parsed
    request_id: str = field(default_factory=new_request_id)
    arrived: Any = field(default_factory=now_utc)
    t0: float = field(default_factory=time.monotonic)
    asked_model: str = ""  # `model` as sent, kept for the log when the body is invalid
    model: str = ""
    served: Any = None
    conversation: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None  # chat: the functions offered, rendered into the prompt
    choice: ToolChoice = field(default_factory=ToolChoice)  # chat: tool_choice (auto when tools are given)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # chat: the calls parsed from the completion
    passages: list[Any] = field(default_factory=list)
    params: Params | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    output: str = ""  # the whole completion (a reasoning trace included): what the request log keeps
    answer: str = ""  # chat: the content after any trace
    reasoning: str | None = None  # chat: the trace, returned as reasoning_content (None: the output has none)
    opened: bool = False  # the prompt opened a trace: the completion starts inside it
    think: tuple[str, str] = ("<think>", "</think>")  # the family's trace markers
    finish_reason: str | None = None
    ttft_s: float | None = None
    status: int = 200
    error: str | None = None
    logged: bool = True  # False for the deploy check's own requests: they are not user traffic
    variant: str = "primary"  # which side of a rollout answers: primary | canary | shadow (serve/rollout.py)
    finished: bool = False  # the log row is written: never a second one


def _not_loaded(state: Any) -> ApiError:
    reason = f"{state.status}{': ' + state.problem if state.problem else ''}"
    return ApiError(503, f"the model is not loaded ({reason})", "server_error", code="not_ready", headers={"Retry-After": "5"})


def _count_prompt(state: Any, call: Call) -> None:
    """call.prompt_tokens through the model's chat template (the one render, in the served run's thinking mode),
    and whether that prompt opens a reasoning trace; a template that refuses the messages is a 400."""
    from jinja2.exceptions import TemplateError

    family = family_of(state.engine.model, state.engine.tokenizer)
    if call.tools and family.tools is None:
        raise ApiError(400, f"this {family.title} model documents no tool-call format", param="tools", code="tools_unsupported")
    try:
        prompt = state.engine.prompt(call.served.name, call.conversation, call.tools)
        call.prompt_tokens = state.engine.prompt_tokens(call.conversation, call.served.name, call.tools)
    except (TemplateError, DataError) as exc:
        raise ApiError(
            400,
            f"the model's chat template refuses these messages: {getattr(exc, 'message', None) or exc}",
            param="messages" if call.kind == "chat" else "prompt",
            code="invalid_messages",
        ) from None
    call.opened, call.think = opens_trace(prompt, family), family.think


def _prepare(state: Any, call: Call) -> None:
    """Resolve the model, retrieve, count prompt tokens and fix the decoding parameters (runs in a worker thread)."""
    body, engine = call.body, state.engine
    try:
        call.served = engine.resolve(body.model)
    except NoSuchModel:
        raise ApiError(
            404, f"the model {body.model!r} does not exist (GET /v1/models lists them)", param="model", code="model_not_found"
        ) from None
    call.model = call.served.name
    if state.rollouts is not None:
        state.rollouts.route(state, call)  # canary: a share of `model` answered by the candidate (call.served)
    call.conversation = body.conversation() if call.kind == "chat" else [{"role": "user", "content": body.text()}]
    if call.kind == "chat":
        call.tools = offered_tools(body.tools)
        call.choice = tool_choice(body.tool_choice, call.tools)
    retrieve(state, call, body.rag)
    _count_prompt(state, call)
    room = engine.context_length - call.prompt_tokens
    limit = body.limit
    if room < 1 or (limit is not None and limit > room):
        raise ApiError(
            400,
            f"this model's context is {engine.context_length} tokens; the prompt has {call.prompt_tokens} "
            f"and max_tokens asks for {limit or 1} more",
            param="messages" if call.kind == "chat" else "prompt",
            code="context_length_exceeded",
        )
    call.params = Params(
        limit or min(room, state.settings.default_max_tokens), body.temperature, body.top_p, body.seed, body.stop_tuple()
    )


def _row(state: Any, call: Call) -> RequestRow:
    content = state.settings.log_content
    body, served = call.body, call.served
    chat, text = call.kind == "chat", call.kind == "completions"
    return RequestRow(
        request_id=call.request_id,
        time=call.arrived,
        endpoint=call.kind,
        model=call.model or (body.model if body is not None and body.model else call.asked_model),
        adapter=served.name if served is not None and served.peft_name else None,
        run=served.run if served is not None else None,
        base_model=state.engine.base_path if state.engine is not None else "",
        data_hash=served.data_hash if served is not None else None,
        messages=[Message(**m) for m in body.conversation()] if content and chat and body is not None else None,
        prompt=body.text() if content and text and body is not None else None,
        output=call.output if content else None,
        tools=call.tools if content else None,
        tool_calls=logged_calls(call.tool_calls) if content else None,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        latency_s=time.monotonic() - call.t0,
        ttft_s=call.ttft_s,
        status=call.status,
        finish_reason=call.finish_reason,
        error=call.error,
        stream=body.stream if body is not None else False,
        temperature=body.temperature if body is not None else 0.0,
        top_p=body.top_p if body is not None else 1.0,
        max_tokens=call.params.max_tokens if call.params else 0,
        rag=bool(call.passages),
        sources=[SourceRef(source=p.source, line=p.line, chunk_id=p.chunk_id, score=p.score) for p in call.passages],
        content_logged=content,
        variant=call.variant,
    )


async def finish(state: Any, call: Call, error: ApiError | None = None) -> None:
    """Count the request and commit its log row, once (before the client gets the end of the response)."""
    if call.finished:
        return
    call.finished = True
    if error is not None:
        call.status, call.error = error.status, error.code or error.type
    latency = time.monotonic() - call.t0
    ok = call.status < 400
    if call.variant != "shadow":  # a shadow copy is no client's request: counted by variant only (serve/rollout.py)
        state.metrics.observe(
            call.model or "unknown",
            call.status,
            latency if ok else None,
            call.ttft_s,
            call.prompt_tokens if ok else 0,
            call.completion_tokens,
        )
        if not ok:
            state.metrics.errors.labels(call.error or str(call.status)).inc()
    if state.store is not None and call.logged:
        await run_in_threadpool(state.store.add_request, _row(state, call))
    if state.rollouts is not None and call.logged:
        state.rollouts.finished(state, call)  # per-variant series; a shadow copy of a primary answer starts here


def _worker_error(call: Call, exc: BaseException) -> ApiError:
    """What the client hears when the worker could not run its request."""
    if isinstance(exc, NoSuchModel):  # the adapter was removed while the request waited
        return ApiError(
            404,
            f"the model {call.model!r} was removed while this request waited; GET /v1/models lists what is served",
            "not_found_error",
            param="model",
            code="model_not_found",
        )
    return ApiError(500, "generation failed (see the server log)", "server_error", code="generation_failed")


async def _wait(request: Request, job: Job, pending: asyncio.Future[Any], timeout_s: float) -> Any:
    """`pending`'s result, or None when the client disconnected (the job is cancelled); 504 after the timeout."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=0.25)
            if done:
                return pending.result()
            if await request.is_disconnected():
                job.cancel_reason = "disconnect"
                job.cancel.set()
                return None
            if time.monotonic() > deadline:
                job.cancel_reason = "timeout"
                job.cancel.set()
                raise ApiError(
                    504, f"generation took longer than the server's timeout ({timeout_s:g} s)", "timeout", code="timeout"
                )
    finally:
        pending.cancel()  # no-op once done; stops a queue read nobody will consume


def _submit(state: Any, call: Call) -> Job:
    """Queue the prepared call; a 429 when the queue is full."""
    assert call.params is not None
    loop = asyncio.get_running_loop()
    job = Job(
        call.served.name,  # the engine's name: the candidate's when a canary answers for `model`
        call.conversation,
        call.params,
        loop,
        # A streamed request that may call runs whole: a call cannot be told from text before it parses.
        stream=call.body.stream and not (call.tools and call.choice.parses),
        deadline=time.monotonic() + state.settings.timeout_s,
        tools=call.tools,
    )
    if job.stream:
        job.deltas = asyncio.Queue()
    else:
        job.future = loop.create_future()
    try:
        state.batcher.submit(job)
    except QueueFull:
        raise ApiError(
            429,
            f"the server is busy ({state.settings.max_queue} requests queued); retry shortly",
            "rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    return job


async def complete(state: Any, request: Request, call: Call) -> Any:
    """Serve one chat or text completion request (JSON or an SSE stream); exactly one log row, whatever happens."""
    try:
        return await _answer(state, request, call)
    except ApiError as err:
        if err.status == 504:
            state.metrics.cancelled.labels("timeout").inc()
        await finish(state, call, err)
        err.headers = {**(err.headers or {}), "x-request-id": call.request_id}
        raise
    except Exception:
        log.exception("unexpected error on request %s", call.request_id)
        crash = ApiError(500, "internal server error (see the server log)", "server_error", code="server_error")
        await finish(state, call, crash)
        crash.headers = {"x-request-id": call.request_id}
        raise crash from None


async def _answer(state: Any, request: Request, call: Call) -> Any:
    raw = await read_body(request)
    call.asked_model = model_field(raw)
    call.body = parse_body(raw, ChatRequest if call.kind == "chat" else CompletionRequest)
    if state.engine is None:
        raise _not_loaded(state)
    await run_in_threadpool(_prepare, state, call)
    job = _submit(state, call)
    timeout_s = state.settings.timeout_s
    if job.stream:
        assert job.deltas is not None
        # The HTTP status is sent with the first event: wait for the worker's first item, so that a request the
        # worker cannot run (its adapter removed meanwhile) still gets a proper error status.
        first = await _wait(request, job, asyncio.ensure_future(job.deltas.get()), timeout_s)
    else:
        assert job.future is not None
        try:
            first = await _wait(request, job, job.future, timeout_s)
        except ApiError:
            raise
        except Exception as exc:
            raise _worker_error(call, exc) from None
    if first is None:  # the client went away; nobody reads this response
        state.metrics.cancelled.labels("disconnect").inc()
        await finish(state, call, ApiError(499, "client disconnected", code="client_disconnected"))
        return Response(status_code=499)
    if isinstance(first, BaseException):
        raise _worker_error(call, first)
    if job.stream:
        stream = _stream(state, call, job, first)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"x-request-id": call.request_id})
    call.output, call.finish_reason = first.text, first.finish_reason
    call.answer, call.reasoning = first.answer, first.reasoning
    call.completion_tokens = first.completion_tokens
    if call.tools and call.choice.parses:
        read_calls(state, call, first)
    await finish(state, call)
    if call.body.stream:  # a request with tools, run whole: its events are the deltas the client assembles
        return StreamingResponse(_events(state, call), media_type="text/event-stream", headers={"x-request-id": call.request_id})
    return JSONResponse(responses.body(call), headers={"x-request-id": call.request_id})


def read_calls(state: Any, call: Call, completion: Any) -> None:
    """The completion's calls (families.tools, in the family's format, special tokens kept); an unparsable call is
    counted and returned as content; a forced tool_choice without its call raises the 422 here. A shadow copy's
    calls are logged, not counted on /metrics (no client asked for them)."""
    style = family_of(state.engine.model, state.engine.tokenizer).tools
    raw = split_output(completion.raw, completion.opened, completion.think).answer
    if completion.raw:
        call.output = completion.raw  # the log keeps the call as written (its special tokens too)
    counted = call.variant != "shadow"
    if (unparsable := tool_error(raw, style)) is not None:
        if counted:
            state.metrics.tool_calls_unparsable.labels(call.model or "unknown").inc()
        log.info("request %s: a tool call that does not parse (%s)", call.request_id, unparsable)
    reply = read_reply(raw, style, call.choice)
    call.tool_calls = reply.calls
    if reply.calls:
        call.answer, call.finish_reason = reply.content or "", "tool_calls"
        if counted:
            state.metrics.tool_calls.labels(call.model or "unknown").inc(len(reply.calls))


async def _events(state: Any, call: Call) -> AsyncIterator[str]:
    """The SSE events of a whole completion: role, content, each call's deltas, the finish reason, usage, [DONE]."""
    yield responses.chunk(call, None, first=True)
    if call.reasoning:
        yield responses.chunk(call, call.reasoning, kind="reasoning")
    if call.answer:
        yield responses.chunk(call, call.answer)
    for delta in call_deltas(call.tool_calls):
        yield responses.delta_chunk(call, delta)
    yield responses.chunk(call, None, responses.finish_reason(call.finish_reason))
    if call.body.include_usage:
        yield responses.usage_chunk(call)
    yield "data: [DONE]\n\n"


async def _stream(state: Any, call: Call, job: Job, first: Any) -> AsyncIterator[str]:
    """SSE chunks from the worker's deltas (`first` already taken); a client that goes away cancels the generation."""
    assert job.deltas is not None
    item = first
    # Chat: a reasoning trace streams as `reasoning_content` deltas, the answer as `content` (split as non-streamed).
    split = TraceStream(call.opened, call.think) if call.kind == "chat" else None
    try:
        yield responses.chunk(call, None, first=True)
        while True:
            if isinstance(item, BaseException):  # failed after the stream began: the status (200) is already sent
                await finish(state, call, _worker_error(call, item))
                yield responses.error_event("generation failed")
                return
            if isinstance(item, str):
                if call.ttft_s is None:
                    call.ttft_s = time.monotonic() - call.t0
                call.output += item
                for kind, piece in split.feed(item) if split is not None else [("content", item)]:
                    yield responses.chunk(call, piece, kind=kind)
                item = await job.deltas.get()
                continue
            call.completion_tokens, call.finish_reason = item.completion_tokens, item.finish_reason
            if job.cancel_reason == "timeout":  # cut short by the server's time limit: reported like a token budget
                call.finish_reason = "length"
                state.metrics.cancelled.labels("timeout").inc()
            break
        for kind, piece in split.finish() if split is not None else []:
            yield responses.chunk(call, piece, kind=kind)
        yield responses.chunk(call, None, responses.finish_reason(call.finish_reason))
        if call.body.include_usage:
            yield responses.usage_chunk(call)
        await finish(state, call)
        yield "data: [DONE]\n\n"
    finally:
        if not call.finished:  # the client went away (the generator was closed or cancelled mid-stream)
            job.cancel_reason = job.cancel_reason or "disconnect"
            job.cancel.set()
            state.metrics.cancelled.labels(job.cancel_reason).inc()
            await asyncio.shield(finish(state, call, ApiError(499, "client disconnected", code="client_disconnected")))
