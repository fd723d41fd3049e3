"""The gate every HTTP request passes: Host header, CORS, API key, body size, JSON.

The rules live here once (their settings in server_settings.py); the routes in
server.py only call ``read_body``.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.openai_schema import ApiError, error_json
from engine.server_settings import ServerSettings, host_name, is_allowed_host

POLICY_VIOLATION = 1008  # WebSocket close code


class HostCheck:
    """ASGI middleware: refuse requests whose ``Host`` is not allow-listed."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        name = host_name(headers.get(b"host", b"").decode("latin-1"))
        if is_allowed_host(name, self.settings):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
        else:
            message = (
                f"The Host header {name!r} is not one this server answers to; "
                "start it with --allowed-host NAME to add a name."
            )
            body = error_json(message, "invalid_request_error", code="invalid_host")
            await JSONResponse(body, status_code=400)(scope, receive, send)


def install_guards(app: FastAPI, settings: ServerSettings) -> None:
    """Add the Host check and, when origins are configured, CORS to ``app``."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HostCheck, settings=settings)  # added last: runs first


def check_key(request: Request, settings: ServerSettings) -> None:
    """Refuse a request without the API key (when one is set)."""
    if settings.api_key is None:
        return
    given = request.headers.get("authorization", "")
    expected = f"Bearer {settings.api_key}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "Missing or wrong API key; send 'Authorization: Bearer KEY'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def read_body(request: Request, settings: ServerSettings) -> dict[str, Any]:
    """The JSON body, refused before reading when it says it is too large."""
    check_key(request, settings)
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    too_large = ApiError(413, f"The request body is over {limit} bytes.")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise too_large
            parts.append(part)
    except ClientDisconnect:  # nobody will read the answer; keep the log quiet
        raise ApiError(400, "The client disconnected while sending.") from None
    return parse_json(b"".join(parts))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json(raw: bytes) -> dict[str, Any]:
    """Parse a request body as strict JSON: UTF-8 only, finite numbers, no lone
    surrogates (``"\\ud800"``), an object at the top.

    Raises:
        ApiError: 400, saying what is wrong.
    """
    try:
        text = raw.decode("utf-8")  # strict: no UTF-16/32, no encoded surrogates
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except UnicodeDecodeError as e:
        message = f"The request body is not valid UTF-8 (byte {e.start})."
        raise ApiError(400, message) from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    _check_strings(body)
    return body


def _check_strings(body: Any) -> None:
    """Refuse strings (keys too) that are not valid Unicode."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400,
                    "The request body has a lone surrogate escape (such as "
                    '"\\ud800"); send valid UTF-8 text.',
                ) from None
