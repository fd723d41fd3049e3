"""The one thread that touches MLX: it loads models and runs generations from a queue.

MLX streams belong to the thread that made them (DESIGN.md, "One thread owns MLX"),
so callers on any thread hand work to this thread and read chunks from a queue.
Requests run one at a time, in arrival order, so outputs never interleave.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from engine.decode import LoadedModel, Speculation, decode
from engine.kv_cache import LRUPromptCache, make_prompt_cache, trim_prompt_cache
from engine.schema import Chunk, SamplingParams

DEFAULT_MAX_QUEUE = 64
DEFAULT_PROMPT_CACHE_BYTES = 2 << 30
PROMPT_CACHE_ENTRIES = 16


class EngineBusy(RuntimeError):
    """The request queue is full; retry later."""


class EngineDied(RuntimeError):
    """The engine thread has stopped; create a new engine."""


@dataclass(frozen=True)
class GenerateRequest:
    """A prompt, already tokenized, for a model the worker holds."""

    model: str
    tokens: tuple[int, ...]
    params: SamplingParams
    speculation: str | None = None  # "draft" (with draft_model) or "lookup"
    draft_model: str | None = None
    num_draft_tokens: int = 4


@dataclass
class Job:
    """A generation in flight: chunks come out of ``out``; ``None`` ends it."""

    request: GenerateRequest
    out: queue.Queue = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


class EngineWorker(threading.Thread):
    """Owns MLX: models, KV caches, the prompt cache and the generation stream."""

    def __init__(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
    ) -> None:
        super().__init__(name="silica-engine", daemon=True)
        self._tasks: queue.Queue = queue.Queue(maxsize=max_queue)
        self._models: dict[str, LoadedModel] = {}
        self._prompt_cache = LRUPromptCache(
            max_size=PROMPT_CACHE_ENTRIES, max_bytes=prompt_cache_bytes
        )
        self._stream: mx.Stream | None = None

    def call(self, fn: Callable[[dict[str, LoadedModel]], Any]) -> Future:
        """Run ``fn(models)`` on the worker thread; the future holds its result."""
        future: Future = Future()
        self._put(("call", fn, future))
        return future

    def generate(self, request: GenerateRequest) -> Job:
        """Queue a generation; read its chunks from ``job.out``.

        Raises:
            EngineBusy: The queue is full.
            EngineDied: The worker thread is gone.
        """
        job = Job(request)
        self._put(("generate", job, None))
        return job

    @property
    def queued(self) -> int:
        return self._tasks.qsize()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the running task, drop the rest and end the thread."""
        if self.is_alive():
            self._tasks.put(("stop", None, None))
            self.join(timeout)

    def _put(self, task: tuple) -> None:
        if not self.is_alive():
            raise EngineDied("The engine thread has stopped; create a new engine.")
        try:
            self._tasks.put_nowait(task)
        except queue.Full as e:
            raise EngineBusy(
                f"The engine queue is full ({self._tasks.maxsize} requests waiting); "
                "retry later."
            ) from e

    def run(self) -> None:
        self._stream = mx.new_stream(mx.default_device())
        try:
            while (task := self._tasks.get())[0] != "stop":
                kind, payload, future = task
                if kind == "call":
                    self._run_call(payload, future)
                else:
                    self._run_generate(payload)
        finally:
            self._models.clear()
            mx.clear_streams()

    def _run_call(self, fn: Callable, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(self._models))
        except Exception as e:  # noqa: BLE001 - the caller receives it through the future
            future.set_exception(e)

    def _run_generate(self, job: Job) -> None:
        request = job.request
        try:
            for index in range(request.params.n):
                if job.cancel.is_set():
                    job.out.put(Chunk("", index=index, finish_reason="cancelled"))
                    continue
                self._complete(job, index)
        except Exception as e:  # one bad request must not stop the engine
            job.out.put(
                Chunk("", finish_reason="error", error=f"{type(e).__name__}: {e}")
            )
        finally:
            job.out.put(None)

    def _complete(self, job: Job, index: int) -> None:
        request = job.request
        loaded = self._models[request.model]
        tokens = list(request.tokens)
        cache, rest = self._prompt_cache.fetch_nearest_cache(request.model, tokens)
        if cache is None:
            cache, rest = make_prompt_cache(loaded.model), tokens
        cached = len(tokens) - len(rest)
        if cached == len(tokens):  # the model needs one token to produce logits
            trim_prompt_cache(cache, 1)
            cached -= 1
        speculation = None
        if request.speculation:
            draft = self._models[request.draft_model] if request.draft_model else None
            speculation = Speculation(draft, request.num_draft_tokens)
        produced: list[int] = []
        for chunk in decode(
            loaded,
            tokens,
            request.params,
            cache=cache,
            cached_tokens=cached,
            index=index,
            stream=self._stream,
            produced=produced,
            speculation=speculation,
            cancelled=job.cancel.is_set,
        ):
            job.out.put(chunk)
        held = cache[0].offset
        self._prompt_cache.insert_cache(
            request.model, (tokens + produced)[:held], cache
        )
