"""What a completion request goes through: model lookup, retrieval, context check, queue, response, log row.

Chat and text completions share this path; they differ only in how the prompt arrives and how the
response is shaped. The log row is committed before the response (or the stream's [DONE]) is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.serve.batching import Job, Params, QueueFull
from tunesmith.serve.schemas import ApiError
from tunesmith.serve.store import (
    Message,
    RequestRow,
    SourceRef,
    new_request_id,
    now_utc,
)


@dataclass
class Call:
    """One request on its way through: what was asked, what it became, and what came back."""

    kind: str  # "chat" | "completions"
    body: Any
    request_id: str = field(default_factory=new_request_id)
    arrived: Any = field(default_factory=now_utc)
    t0: float = field(default_factory=time.monotonic)
    model: str = ""
    served: Any = None
    conversation: list[dict[str, str]] = field(default_factory=list)
    passages: list[Any] = field(default_factory=list)
    params: Params | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    output: str = ""
    finish_reason: str | None = None
    ttft_s: float | None = None
    status: int = 200
    error: str | None = None
    logged: bool = True  # False for the deploy check's own requests: they are not user traffic


def _retrieve(state: Any, call: Call, flag: bool | None) -> None:
    """Put retrieved passages into the conversation when asked (or when the adapter's recipe trained with them)."""
    from tunesmith.rag.prompt import augment
    from tunesmith.rag.retrieve import Retriever

    section = call.served.rag
    if not (flag if flag is not None else section is not None):
        return
    index = section.index if section is not None else state.settings.index
    if index is None:
        raise ApiError(400, "retrieval was requested but the server has no index (start it with --index)", param="rag")
    retriever = Retriever.open(Path(index), section.embedder if section is not None else None)
    if section is not None:
        call.conversation, call.passages = augment(call.conversation, retriever, section.k, section.template, section.mode)
    else:
        call.conversation, call.passages = augment(call.conversation, retriever)
    state.metrics.retrieval_requests.labels(call.model).inc()
    state.metrics.retrieval_hits.labels(call.model).inc(len(call.passages))


def _prepare(state: Any, call: Call) -> None:
    """Resolve the model, retrieve, count prompt tokens and fix the decoding parameters (runs in a worker thread)."""
    body, engine = call.body, state.engine
    try:
        call.served = engine.resolve(body.model)
    except KeyError:
        raise ApiError(
            404, f"the model {body.model!r} does not exist (GET /v1/models lists them)", param="model", code="model_not_found"
        ) from None
    call.model = call.served.name
    call.conversation = body.conversation() if call.kind == "chat" else [{"role": "user", "content": body.text()}]
    _retrieve(state, call, body.rag)
    call.prompt_tokens = engine.prompt_tokens(call.conversation)
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
    body = call.body
    return RequestRow(
        request_id=call.request_id,
        time=call.arrived,
        endpoint=call.kind,
        model=call.model or str(body.model),
        adapter=call.served.name if call.served is not None and call.served.peft_name else None,
        run=call.served.run if call.served is not None else None,
        base_model=state.engine.base_path,
        data_hash=call.served.data_hash if call.served is not None else None,
        messages=[Message(**m) for m in body.conversation()] if content and call.kind == "chat" else None,
        prompt=body.text() if content and call.kind == "completions" else None,
        output=call.output if content else None,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        latency_s=time.monotonic() - call.t0,
        ttft_s=call.ttft_s,
        status=call.status,
        finish_reason=call.finish_reason,
        error=call.error,
        stream=body.stream,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=call.params.max_tokens if call.params else 0,
        rag=bool(call.passages),
        sources=[SourceRef(source=p.source, line=p.line, chunk_id=p.chunk_id, score=p.score) for p in call.passages],
        content_logged=content,
    )


async def finish(state: Any, call: Call) -> None:
    """Commit the log row and count the request (before the client gets the end of the response)."""
    latency = time.monotonic() - call.t0
    state.metrics.observe(
        call.model or "unknown",
        call.status,
        latency if call.status == 200 else None,
        call.ttft_s,
        call.prompt_tokens if call.status == 200 else 0,
        call.completion_tokens,
    )
    if call.status >= 400:
        state.metrics.errors.labels(call.error or str(call.status)).inc()
    if state.store is not None and call.logged:
        await run_in_threadpool(state.store.add_request, _row(state, call))


def _sources(call: Call) -> list[dict[str, Any]]:
    return [{"source": p.source, "line": p.line, "chunk_id": p.chunk_id, "score": p.score, "text": p.text} for p in call.passages]


def _usage(call: Call) -> dict[str, int]:
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "total_tokens": call.prompt_tokens + call.completion_tokens,
    }


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _envelope(call: Call, chunk: bool) -> dict[str, Any]:
    obj = {"chat": "chat.completion", "completions": "text_completion"}[call.kind]
    return {
        "id": call.request_id,
        "object": obj + (".chunk" if chunk and call.kind == "chat" else ""),
        "created": int(call.arrived.timestamp()),
        "model": call.model,
    }


def _body(call: Call) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(call.finish_reason), "logprobs": None}
    if call.kind == "chat":
        choice["message"] = {"role": "assistant", "content": call.output}
    else:
        choice["text"] = call.output
    out = {**_envelope(call, False), "choices": [choice], "usage": _usage(call)}
    if call.passages:
        out["sources"] = _sources(call)
    return out


def _chunk(call: Call, text: str | None, finish: str | None = None, first: bool = False) -> str:
    if call.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    out = {**_envelope(call, True), "choices": [choice]}
    if first and call.passages:
        out["sources"] = _sources(call)
    return f"data: {json.dumps(out)}\n\n"


async def _wait(request: Request, job: Job, timeout_s: float) -> Any:
    """The job's Completion, or None when the client disconnected (the job is cancelled); 504 after the timeout."""
    assert job.future is not None
    deadline = time.monotonic() + timeout_s
    while True:
        done, _ = await asyncio.wait({job.future}, timeout=0.25)
        if done:
            return job.future.result()
        if await request.is_disconnected():
            job.cancel_reason = "disconnect"
            job.cancel.set()
            return None
        if time.monotonic() > deadline:
            job.cancel_reason = "timeout"
            job.cancel.set()
            raise ApiError(504, f"generation took longer than the server's timeout ({timeout_s:g} s)", "timeout", code="timeout")


async def complete(state: Any, request: Request, call: Call) -> Any:
    """Serve one chat or text completion request (JSON or an SSE stream)."""
    try:
        await run_in_threadpool(_prepare, state, call)
        assert call.params is not None
        loop = asyncio.get_running_loop()
        job = Job(
            call.model,
            call.conversation,
            call.params,
            loop,
            stream=call.body.stream,
            deadline=time.monotonic() + state.settings.timeout_s,
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
    except ApiError as err:
        call.status, call.error = err.status, err.code or err.type
        await finish(state, call)
        raise
    if job.stream:
        return StreamingResponse(
            _stream(state, request, call, job), media_type="text/event-stream", headers={"x-request-id": call.request_id}
        )
    try:
        completion = await _wait(request, job, state.settings.timeout_s)
    except ApiError as err:
        call.status, call.error = err.status, err.code
        state.metrics.cancelled.labels("timeout").inc()
        await finish(state, call)
        raise
    if completion is None:  # the client went away; nobody reads this response
        call.status, call.error = 499, "client_disconnected"
        state.metrics.cancelled.labels("disconnect").inc()
        await finish(state, call)
        return Response(status_code=499)
    call.output, call.finish_reason = completion.text, completion.finish_reason
    call.completion_tokens = completion.completion_tokens
    await finish(state, call)
    return JSONResponse(_body(call), headers={"x-request-id": call.request_id})


async def _stream(state: Any, request: Request, call: Call, job: Job) -> AsyncIterator[str]:
    """SSE chunks from the worker's deltas; a client that goes away cancels the generation."""
    assert job.deltas is not None
    done = False
    try:
        yield _chunk(call, None, first=True)
        while True:
            item = await job.deltas.get()
            if isinstance(item, BaseException):
                call.status, call.error = 500, "generation_failed"
                await finish(state, call)
                done = True
                yield f"data: {json.dumps({'error': {'message': 'generation failed', 'type': 'server_error'}})}\n\n"
                return
            if isinstance(item, str):
                if call.ttft_s is None:
                    call.ttft_s = time.monotonic() - call.t0
                call.output += item
                yield _chunk(call, item)
                continue
            call.completion_tokens, call.finish_reason = item.completion_tokens, item.finish_reason
            if job.cancel_reason == "timeout":  # cut short by the server's time limit: reported like a token budget
                call.finish_reason = "length"
                state.metrics.cancelled.labels("timeout").inc()
            break
        yield _chunk(call, None, _finish_reason(call.finish_reason))
        if call.body.include_usage:
            yield f"data: {json.dumps({**_envelope(call, True), 'choices': [], 'usage': _usage(call)})}\n\n"
        await finish(state, call)
        done = True
        yield "data: [DONE]\n\n"
    finally:
        if not done:  # the client went away (the generator was closed or cancelled mid-stream)
            job.cancel_reason = job.cancel_reason or "disconnect"
            job.cancel.set()
            state.metrics.cancelled.labels(job.cancel_reason).inc()
            call.status, call.error = 499, "client_disconnected"
            await asyncio.shield(finish(state, call))
