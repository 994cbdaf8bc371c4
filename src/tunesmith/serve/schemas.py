"""OpenAI-shaped request bodies and errors.

Unknown request fields are ignored (clients send options this server does not use); known ones are
range-checked, and a bad one becomes a 400 whose `param` names the field, as the OpenAI API does.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, str]:
        """Plain {role, content}; content parts are joined text; `developer` is the newer name for `system`."""
        content = self.content
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class _Sampling(_Body):
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
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

    def conversation(self) -> list[dict[str, str]]:
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


class AdapterRequest(_Body):
    name: str
    path: str = Field(..., description="Run or adapter folder, relative to the server's adapters folder.")


def validation_error(errors: list[Any]) -> ApiError:
    """A 400 for the first problem pydantic or the JSON parser found, naming the field."""
    first = errors[0] if errors else {}
    whole_body = tuple(first.get("loc", ())) == ("body",) and "dict" in str(first.get("type"))
    if first.get("type") == "json_invalid" or whole_body:
        detail = first.get("ctx", {}).get("error", "expected a JSON object")
        return ApiError(400, f"malformed JSON body: {detail}", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return ApiError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value")
