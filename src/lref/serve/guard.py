"""What both HTTP services share to defend themselves: the body-size limit, bearer-token auth and the rule that a
server listening beyond loopback must have a token.

The token comes from ``--token-file PATH`` (first line, whitespace stripped) or the ``LREF_SERVE_TOKEN`` environment
variable. Without one, a loopback server runs open; any other host refuses to start (:class:`AuthConfigError`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Collection
from pathlib import Path

from starlette.responses import JSONResponse

from lref.net import is_loopback_host

TOKEN_ENV = "LREF_SERVE_TOKEN"

ErrorBody = Callable[[int, str, str], JSONResponse]
"""(status, message, kind) -> the service's JSON error response."""


class AuthConfigError(ValueError):
    """The server's authentication setup is unusable (no token for a public host, an empty token file...)."""


def resolve_token(token_file: str | None, host: str) -> str | None:
    """The bearer token clients must send, or None (open). AuthConfigError when the file is unreadable or empty,
    or when `host` is not loopback and there is no token."""
    token = None
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise AuthConfigError(f"cannot read the token file {token_file}: {error.strerror}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise AuthConfigError(f"the token file {token_file} is empty")
    elif os.environ.get(TOKEN_ENV, "").strip():
        token = os.environ[TOKEN_ENV].strip()
    if token is None and not is_loopback_host(host):
        raise AuthConfigError(
            f"refusing to listen on {host} without authentication: give --token-file PATH or set {TOKEN_ENV} "
            "(only a loopback host may run without a token)")
    return token


class BearerAuth:
    """ASGI middleware: 401 unless the request carries ``Authorization: Bearer <token>``; `open_paths` skip it."""

    def __init__(self, app, token: str, error: ErrorBody, open_paths: Collection[str] = ()):
        self.app, self.error, self.open_paths = app, error, set(open_paths)
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):  # constant time: no timing oracle on the token
            return await self.app(scope, receive, send)
        response = self.error(401, "missing or wrong bearer token", "authentication_error")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or, when that is absent or lies, by
    the bytes actually received (the body is buffered up to the limit, then replayed to the app)."""

    def __init__(self, app, max_bytes: int, error: ErrorBody):
        self.app, self.max_bytes, self.error = app, max_bytes, error

    async def _refuse(self, scope, receive, send, status: int, message: str) -> None:
        kind = "request_too_large" if status == 413 else "invalid_request"
        await self.error(status, message, kind)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"request body exceeds this server's limit of {self.max_bytes} bytes"
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await self._refuse(scope, receive, send, 413, too_large)
            except ValueError:
                bad = declared.decode(errors="replace")[:40]
                return await self._refuse(scope, receive, send, 400, f"invalid Content-Length header {bad!r}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, 413, too_large)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def valid_utf8(text: str) -> str:
    """`text`, or ValueError when it holds a lone surrogate (JSON allows "\\ud800"; tokenizers and UTF-8 do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return text


__all__ = ["AuthConfigError", "BearerAuth", "BodyLimit", "TOKEN_ENV", "resolve_token", "valid_utf8"]
