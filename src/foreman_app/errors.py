"""The one place where errors become HTTP responses.

Every error foreman produces is `{"error": "…"}` with `application/json`, Ollama's own shape:
foreman's core errors, bodies foreman cannot read, Litestar's routing and limit errors (401, 404,
405, 413, …) and anything unexpected (500, logged with its traceback). A target's HTTP error is
relayed as the target sent it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_502_BAD_GATEWAY,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap

from foreman_app.auth import is_authorized
from foreman_app.requests import ClientLeft, InvalidRequest
from foreman_core.errors import (
    ArtifactNotFound,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    ModelNotFound,
    QueueFull,
    StaleJob,
    TargetError,
    TargetRejected,
)

JSON = "application/json; charset=utf-8"
QUEUE_FULL_RETRY_AFTER = 5
"""Seconds a client refused for a full queue is told to wait (Retry-After)."""

logger = logging.getLogger("foreman.app")

_HTTP_MESSAGES = {
    HTTP_401_UNAUTHORIZED: "unauthorized",
    HTTP_404_NOT_FOUND: "not found",
    HTTP_405_METHOD_NOT_ALLOWED: "method not allowed",
    HTTP_413_REQUEST_ENTITY_TOO_LARGE: "request body too large",
}
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}

ErrorHandler = Callable[[Request[Any, Any, Any], Exception], Response[bytes]]


def error_body(message: str) -> bytes:
    """Ollama's error body, `{"error":"<message>"}`, compact as Ollama writes it."""
    return msgspec.json.encode({"error": message})


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    """`{"error": message}` as JSON with `status`."""
    return Response(
        error_body(message),
        status_code=status,
        media_type=JSON,
        headers=dict(headers or {}),
    )


def _status(status: int) -> ErrorHandler:
    def handle(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        return error_response(status, str(exc))

    return handle


def _fixed(status: int, message: str) -> ErrorHandler:
    def handle(_: Request[Any, Any, Any], __: Exception) -> Response[bytes]:
        return error_response(status, message)

    return handle


def _queue_full(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    estimate = getattr(exc, "retry_after", None)
    seconds = QUEUE_FULL_RETRY_AFTER if estimate is None else max(1, math.ceil(estimate))
    return error_response(HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": str(seconds)})


def _target_rejected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, TargetRejected)
    return Response(exc.body, status_code=exc.status, media_type=exc.content_type)


def _target_failed(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return error_response(HTTP_502_BAD_GATEWAY, str(exc) or "the Ollama target failed")


def _http_exception(tokens: Sequence[str]) -> ErrorHandler:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        assert isinstance(exc, HTTPException)
        routed = "route_handler" in request.scope
        if isinstance(exc, NotAuthorizedException) or (
            not routed
            and isinstance(exc, NotFoundException | MethodNotAllowedException)
            and not is_authorized(request.scope, tokens)
        ):
            # Unknown routes and wrong methods answer 401 too, so they reveal no route.
            return error_response(HTTP_401_UNAUTHORIZED, "unauthorized", _UNAUTHORIZED_HEADERS)
        status = exc.status_code
        if status == HTTP_500_INTERNAL_SERVER_ERROR:
            return _internal_error(request, exc)
        message = _HTTP_MESSAGES.get(status) if not routed or status != 404 else None
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
        return error_response(status, message or _detail(exc), headers)

    return handle


def _detail(exc: HTTPException) -> str:
    detail = exc.detail or _HTTP_MESSAGES.get(exc.status_code, "error")
    if exc.extra and exc.status_code == HTTP_400_BAD_REQUEST:
        detail = f"{detail}: {msgspec.json.encode(exc.extra).decode()}"
    return detail


def _client_left(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.info(
        "%s %s: the client left before its request was whole", request.method, request.url.path
    )
    return error_response(HTTP_400_BAD_REQUEST, "client disconnected")


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


def exception_handlers(auth_tokens: Sequence[str]) -> ExceptionHandlersMap:
    """The app's exception-to-response map; `auth_tokens` guard the 404s of unknown routes."""
    handlers: dict[type[Exception], ErrorHandler] = {
        InvalidRequest: _status(HTTP_400_BAD_REQUEST),
        ClientLeft: _client_left,
        ModelNotFound: _status(HTTP_404_NOT_FOUND),
        JobNotFound: _fixed(HTTP_404_NOT_FOUND, "job not found"),
        ArtifactNotFound: _fixed(HTTP_404_NOT_FOUND, "artifact not found"),
        QueueFull: _queue_full,
        IdempotencyConflict: _status(HTTP_422_UNPROCESSABLE_ENTITY),
        InvalidTransition: _status(HTTP_409_CONFLICT),
        StaleJob: _status(HTTP_409_CONFLICT),
        TargetRejected: _target_rejected,
        TargetError: _target_failed,
        HTTPException: _http_exception(auth_tokens),
        Exception: _internal_error,
    }
    return handlers  # type: ignore[return-value]
