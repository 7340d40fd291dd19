"""Bearer-token authentication of foreman's clients (FOREMAN_AUTH_TOKEN).

Routes whose handler carries the opt key `PUBLIC` (`GET /healthz`, `GET|HEAD /`) are open; every
other route needs `Authorization: Bearer <token>` with one of the configured tokens. Requests
for unknown routes never reach a handler's middleware, so the error mapper asks `is_authorized`
too: an unauthenticated client learns nothing about which routes exist.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from litestar.exceptions import NotAuthorizedException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

PUBLIC = "public"
"""Opt key of the route handlers that never need a token."""


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer …` header among raw ASGI headers, if any."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


def is_authorized(scope: Scope, tokens: Sequence[str]) -> bool:
    """True when no token is configured or the request carries one of `tokens`."""
    if not tokens:
        return True
    offered = bearer_token(scope.get("headers", ()))
    if offered is None:
        return False
    # Compare against every token, without stopping early, so timing tells nothing.
    matches = [hmac.compare_digest(offered, token.encode()) for token in tokens]
    return any(matches)


class BearerAuth(ASGIMiddleware):
    """Refuses requests without a configured bearer token with 401 (see the module docstring)."""

    exclude_opt_key = PUBLIC

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tuple(tokens)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Pass the request on when it is authorized; raise 401 otherwise."""
        if not is_authorized(scope, self.tokens):
            raise NotAuthorizedException("unauthorized")
        await next_app(scope, receive, send)
