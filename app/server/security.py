"""The guard in front of every route: the API key (compared in constant time) and the request
body's size limit, as plain ASGI middleware (it does not buffer responses, so streaming and
disconnect detection are untouched). CORS preflights are answered before this by Starlette's
CORS middleware, and only when origins are listed."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.server.errors import ApiError

OPEN_PATHS = ("/health",)  # says only whether a model is loaded


class Guard:
    """Refuse requests without the key (401) or with a body over ``max_body_bytes`` (413)."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    def key_ok(self, authorization: bytes) -> bool:
        if self._expected is None:
            return True
        # compare_digest's time does not depend on where the strings differ
        return hmac.compare_digest(authorization, self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["path"] not in OPEN_PATHS and not self.key_ok(headers.get(b"authorization", b"")):
            error = ApiError(401, "A valid API key is required: send 'Authorization: Bearer "
                                  "<key>'.", code="invalid_api_key")
            await error.response()(scope, receive, send)
            return
        too_large = ApiError(413, f"The request body is over the limit of "
                                  f"{self.max_body_bytes:,} bytes.", code="request_too_large")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit()
                                     or int(declared) > self.max_body_bytes):
            await too_large.response()(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the body here (bounded), then hand it on; later receives (a disconnect) pass.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left while sending
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await too_large.response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
