"""Errors in OpenAI's shape — ``{"error": {"message", "type", "param", "code"}}`` — with the
status codes its clients expect (the ``openai`` package picks its exception by status)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from app.engine.host import Crashed
from app.engine.protocol import Failed

# engine failure code (``Failed.code``) -> HTTP status and OpenAI error code
_ENGINE_CODES = {
    "context_length": (400, "context_length_exceeded"),
    "template": (400, "template_error"),
    "grammar": (400, "invalid_grammar"),
    "invalid_request": (400, "invalid_request"),
    "embeddings_unsupported": (400, "embeddings_unsupported"),
    "no_model": (503, "model_not_loaded"),
    "engine_unavailable": (503, "engine_unavailable"),
}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def from_engine(event: Failed | Crashed) -> ApiError:
    """The API error for a request the engine could not answer."""
    if isinstance(event, Crashed):
        return ApiError(503, f"{event.message} The model is reloaded on the next request.",
                        code="engine_crashed", kind="server_error")
    status, code = _ENGINE_CODES.get(event.code, (500, "engine_error"))
    return ApiError(status, event.message, code=code)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "The request body is not valid.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    return (f"Invalid value for '{param}': {message}." if param else f"{message}."), param


def install_handlers(app: FastAPI) -> None:
    """Answer every error — ours, validation, routing — in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"Internal error: {type(exc).__name__}: {exc}",
                        code="internal_error").response()
