"""OpenAI-shaped request bodies and errors.

Unknown request fields are ignored (clients send options this server does not use); known ones are
range-checked, and a bad one becomes a 400 whose `param` names the field, as the OpenAI API does.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

INT64 = 2**63  # OpenAI's `seed` is a signed 64-bit integer
MAX_BODY_BYTES = 8 * 2**20  # far above any prompt a context window holds; a bigger body is refused unread


class ApiError(Exception):
    """An error the client gets as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Body):
    name: str = Field(..., min_length=1)
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant turn's calls (sent back after their results).")
    tool_call_id: str | None = Field(None, description="A tool result: the call it answers.")

    def as_dict(self) -> dict[str, Any]:
        """{role, content} (+ tool_calls, tool_call_id); content parts are joined text; `developer` is the newer name
        for `system`."""
        content = self.content
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id or f"call_{k}",
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": _arguments_text(c.function.arguments)},
                }
                for k, c in enumerate(self.tool_calls)
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _arguments_text(arguments: str | dict[str, Any]) -> str:
    import json

    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


class _Sampling(_Body):
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64, description="Signed 64-bit integer.")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is generated.")
    rag: bool | None = Field(None, description="Put retrieved passages into the prompt; default: the adapter's recipe.")
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop if s)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = Field(None, description="Functions the model may call (OpenAI's shape).")
    tool_choice: str | dict[str, Any] | None = Field(None, description="auto, none, required, or a named function.")

    def conversation(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.messages]

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def limit(self) -> int | None:
        return self.max_tokens


class FeedbackRequest(_Body):
    request_id: str = Field(..., min_length=1, max_length=200)
    rating: Literal["up", "down"]
    correction: str | None = Field(None, max_length=100_000, description="The answer the model should have given.")
    tool_calls: list[ToolCall] | None = Field(None, max_length=64, description="The calls the model should have made.")


class AdapterRequest(_Body):
    name: str = Field(..., max_length=128)
    path: str = Field(..., max_length=4096, description="Run or adapter folder, relative to the server's adapters folder.")


Body = TypeVar("Body", bound=BaseModel)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most `limit` bytes; a 413 ApiError past it (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """`raw` JSON validated as `model`; a 400 ApiError naming the first bad field (or the malformed JSON).

    pydantic's JSON parser bounds nesting depth, so a deeply nested body is a 400, not a RecursionError.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(list(exc.errors(include_url=False))) from None


def model_field(raw: bytes) -> str:
    """The `model` a possibly malformed body asked for ("" when it cannot be read), for the request log."""
    from pydantic_core import from_json

    try:
        value = from_json(raw)
    except ValueError:
        return ""
    name = value.get("model") if isinstance(value, dict) else None
    return name[:200] if isinstance(name, str) else ""


def validation_error(errors: list[Any]) -> ApiError:
    """A 400 for the first problem pydantic or the JSON parser found, naming the field."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    whole_body = not loc and first.get("type") in ("model_type", "dict_type", "model_attributes_type")
    if first.get("type") == "json_invalid" or whole_body:
        detail = first.get("ctx", {}).get("error", "expected a JSON object")
        return ApiError(400, f"malformed JSON body: {detail}", code="invalid_json")
    param = ".".join(loc) or None
    return ApiError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value")
