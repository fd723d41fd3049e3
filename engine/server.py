"""The OpenAI-compatible HTTP API: validate requests, stream the engine's chunks out.

No generation logic lives here: each request becomes ``model.stream(...)`` and the
chunks it yields become OpenAI JSON (see openai_schema.py). The engine runs requests
one at a time in arrival order, so concurrent clients queue instead of interleaving.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from engine import fast_blas
from engine.http_guard import check_key, install_guards, read_body
from engine.memory_budget import InsufficientMemory
from engine.moderation_api import moderation_json, parse_moderation
from engine.openai_schema import (
    ApiError,
    ApiRequest,
    Reply,
    Tally,
    chunk_json,
    error_json,
    parse_chat,
    parse_completion,
    response_json,
    role_json,
    usage_json,
)
from engine.runtime import ChunkStream, Engine, Model
from engine.safety.policy import Policy
from engine.safety.screen import ContentBlocked
from engine.schema import Chunk
from engine.server_settings import ServerSettings
from engine.worker import EngineBusy, EngineDied

CLIENT_CLOSED = 499  # nginx's status for "the client went away"; nobody reads it
_END = object()  # the relay thread's end-of-stream marker


class ClientGone(Exception):
    """The client disconnected; its generation has been cancelled."""


def make_app(
    engine: Engine, models: Mapping[str, Model], settings: ServerSettings | None = None
) -> FastAPI:
    """Build the FastAPI app that serves ``models`` through ``engine``.

    Args:
        engine: The engine that loaded the models; only its queue length is read.
        models: The models to serve, by the name clients pass as ``model``; read
            per request, so a ``ModelPool`` that grows is served as it grows.
        settings: Limits and the API key; defaults to ``ServerSettings()``.

    Returns:
        An ASGI app with ``/health``, ``/v1/models``, ``/v1/chat/completions``,
        ``/v1/completions`` and ``/v1/moderations``. Run it with uvicorn
        (``silica serve`` does).
    """
    settings = settings or ServerSettings()
    app = FastAPI(title="Silica", openapi_url=None, docs_url=None, redoc_url=None)
    install_guards(app, settings)
    _add_error_handlers(app)
    _add_info_routes(app, engine, models, settings)
    for path, parse in (
        ("/v1/chat/completions", parse_chat),
        ("/v1/completions", parse_completion),
    ):
        _add_generation_route(app, path, parse, models, settings)

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> JSONResponse:
        texts = parse_moderation(await read_body(request, settings))
        policy = engine.safety or Policy()  # asked for explicitly: screen anyway
        return JSONResponse(await run_in_threadpool(moderation_json, texts, policy))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        body = error_json(str(e.detail), kind)
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        message = f"Internal error: {type(e).__name__}: {e}"
        return JSONResponse(error_json(message, "server_error"), status_code=500)


def _add_info_routes(
    app: FastAPI, engine: Engine, models: Mapping[str, Model], settings: ServerSettings
) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        alive = engine.worker.is_alive()
        body = {
            "status": "ok" if alive else "engine stopped",
            "models": list(models),
            "queued": engine.worker.queued,
            "blas": fast_blas.in_use(),
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request, settings)
        data = [_model_json(name, m) for name, m in models.items()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
    async def get_model(request: Request, name: str) -> dict[str, Any]:
        check_key(request, settings)
        return _model_json(name, _pick(models, name))


def _model_json(name: str, model: Model) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "silica",
        "context_length": model.info.context_length,
        "stored_format": model.info.stored_format,
        "compute_format": model.info.compute_format,
    }


def _pick(models: Mapping[str, Model], name: str) -> Model:
    if name not in models:
        raise ApiError(
            404,
            f"The model {name!r} does not exist; this server has {sorted(models)}.",
            param="model",
            code="model_not_found",
        )
    return models[name]


def _add_generation_route(
    app: FastAPI,
    path: str,
    parse: Callable[[dict[str, Any]], ApiRequest],
    models: Mapping[str, Model],
    settings: ServerSettings,
) -> None:
    @app.post(path)
    async def generate(request: Request) -> Response:
        api = parse(await read_body(request, settings))
        model = _pick(models, api.model)
        draft = _pick(models, api.draft_model) if api.draft_model else None
        stream = await _start(model, api, settings, draft)
        reply = Reply.new(api.model, chat=api.chat)
        if api.stream:
            return StreamingResponse(
                _sse(request, stream, reply, api, settings),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            tally = await _collect(request, stream, api, settings)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(response_json(reply, tally, api.params))


async def _start(
    model: Model, api: ApiRequest, settings: ServerSettings, draft: Model | None
) -> ChunkStream:
    """Queue the generation; tokenizing runs off the event loop."""
    start = partial(model.stream, draft=draft, speculation=api.speculation)
    try:
        return await run_in_threadpool(start, api.prompt, api.params)
    except EngineBusy as e:
        retry = {"Retry-After": str(settings.retry_after_s)}
        raise ApiError(
            503, str(e), kind="server_error", code="engine_busy", headers=retry
        ) from None
    except EngineDied as e:
        raise ApiError(503, str(e), kind="server_error", code="engine_died") from None
    except ContentBlocked as e:
        raise ApiError(400, str(e), code="content_filter") from None
    except InsufficientMemory as e:
        raise ApiError(
            503, str(e), kind="server_error", code="insufficient_memory"
        ) from None
    except ValueError as e:
        raise ApiError(400, str(e)) from None


async def _collect(
    request: Request, stream: ChunkStream, api: ApiRequest, settings: ServerSettings
) -> Tally:
    tally = Tally(api.params.n)
    try:
        async with aclosing(_relay(request, stream, settings)) as chunks:
            async for chunk in chunks:
                if chunk is not None:
                    _raise_if_failed(chunk)
                    tally.add(chunk)
    except EngineDied as e:
        raise ApiError(503, str(e), kind="server_error", code="engine_died") from None
    return tally


def _raise_if_failed(chunk: Chunk) -> None:
    if chunk.finish_reason == "error":
        raise ApiError(500, f"Generation failed: {chunk.error}", kind="server_error")


async def _sse(
    request: Request,
    stream: ChunkStream,
    reply: Reply,
    api: ApiRequest,
    settings: ServerSettings,
) -> AsyncIterator[str]:
    """Server-sent events: one ``data:`` line per chunk, then ``data: [DONE]``."""
    tally, usage = Tally(api.params.n), api.include_usage
    try:
        if reply.chat:
            for index in range(api.params.n):
                yield _event(role_json(reply, index, usage))
        idle_since = time.monotonic()
        async with aclosing(_relay(request, stream, settings)) as chunks:
            async for chunk in chunks:
                if chunk is None:
                    if time.monotonic() - idle_since > settings.keepalive_s:
                        idle_since = time.monotonic()
                        yield ": keep-alive\n\n"
                    continue
                _raise_if_failed(chunk)
                offset = tally.add(chunk)
                if chunk.text or chunk.logprob or chunk.finish_reason:
                    yield _event(chunk_json(reply, chunk, offset, api.params, usage))
                    idle_since = time.monotonic()
        if usage:
            yield _event(usage_json(reply, tally))
        yield "data: [DONE]\n\n"
    except ApiError as e:  # headers are sent: the error becomes the last event
        yield _event(e.body())
    except EngineDied as e:
        yield _event(error_json(str(e), "server_error", code="engine_died"))
    except ClientGone:
        return
    finally:
        stream.cancel()


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, allow_nan=False)}\n\n"


async def _relay(
    request: Request, stream: ChunkStream, settings: ServerSettings
) -> AsyncIterator[Chunk | None]:
    """Chunks of ``stream`` without blocking the event loop; ``None`` while idle.

    A thread reads the blocking stream into an asyncio queue, so waiting can time
    out to check the client without losing a chunk. The generation is cancelled
    when the client disconnects or this generator is closed early.

    Raises:
        ClientGone: The client disconnected.
        EngineDied: The engine thread stopped.
    """
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    threading.Thread(
        target=_pump, args=(stream, loop, inbox), name="silica-relay", daemon=True
    ).start()
    check_at = loop.time() + settings.poll_s
    try:
        while True:
            item = await _next_item(inbox, max(check_at - loop.time(), 1e-3))
            if loop.time() >= check_at:  # checked on a clock: chunks may never pause
                if await request.is_disconnected():
                    raise ClientGone
                check_at = loop.time() + settings.poll_s
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stream.cancel()


async def _next_item(inbox: asyncio.Queue, timeout: float) -> object:
    """The next item of ``inbox``, or ``None`` after ``timeout`` seconds."""
    try:
        return inbox.get_nowait()
    except asyncio.QueueEmpty:
        pass
    try:
        return await asyncio.wait_for(inbox.get(), timeout)
    except asyncio.TimeoutError:
        return None


def _pump(
    stream: ChunkStream, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue
) -> None:
    """Runs on a relay thread: move chunks from the engine into the event loop."""

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody will read this
            stream.cancel()

    try:
        for chunk in stream:
            put(chunk)
    except Exception as e:  # EngineDied; handed to the request that owns the stream
        put(e)
    finally:
        put(_END)
