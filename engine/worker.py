"""The one thread that touches MLX: it loads models and runs generations from a queue.

MLX streams belong to the thread that made them (DESIGN.md, "One thread owns MLX"),
so callers on any thread hand work to this thread and read chunks from a queue.
Tasks run one at a time, in arrival order. A group task (``generate_together``, the
web UI's Compare tab) steps its generations in turns, one token each, so they stream
side by side; each keeps its own cache, random key and stats.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from engine.decode import LoadedModel, Speculation, decode
from engine.kv_cache import LRUPromptCache, make_prompt_cache, trim_prompt_cache
from engine.memory_budget import default_memory_budget, physical_memory
from engine.schema import Chunk, MemoryInfo, SamplingParams

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
    speculation: str | None = None  # "draft" (with draft_model), "lookup" or "auto"
    draft_model: str | None = None
    num_draft_tokens: int = 4


@dataclass
class Job:
    """A generation in flight: chunks come out of ``out``; ``None`` ends it."""

    request: GenerateRequest
    out: queue.Queue = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class GroupJob:
    """Generations run side by side: ``(side, chunk)`` pairs come out of ``out``.

    ``None`` ends the group; every side ends with a chunk that has a finish reason.
    """

    requests: tuple[GenerateRequest, ...]
    interleave: bool = True
    out: queue.Queue = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


class EngineWorker(threading.Thread):
    """Owns MLX: models, KV caches, the prompt cache and the generation stream."""

    def __init__(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        memory_budget: int | None = None,
    ) -> None:
        super().__init__(name="silica-engine", daemon=True)
        self.memory_budget = memory_budget  # None: the device's default, set in run
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

    def generate_together(
        self, requests: Sequence[GenerateRequest], *, interleave: bool = True
    ) -> GroupJob:
        """Queue generations as one task: in turns when ``interleave``, else in order.

        Raises:
            EngineBusy: The queue is full.
            EngineDied: The worker thread is gone.
        """
        job = GroupJob(tuple(requests), interleave)
        self._put(("together", job, None))
        return job

    @property
    def queued(self) -> int:
        """Tasks waiting (the running one not included)."""
        return self._tasks.qsize()

    @property
    def max_queue(self) -> int:
        """Tasks that may wait at most; more raise ``EngineBusy``."""
        return self._tasks.maxsize

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
        if self.memory_budget is None:
            self.memory_budget = default_memory_budget(mx.device_info())
        try:
            while (task := self._tasks.get())[0] != "stop":
                kind, payload, future = task
                if kind == "call":
                    self._run_call(payload, future)
                elif kind == "together":
                    self._run_together(payload)
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
        try:
            for chunk in self._chunks(job.request, job.cancel.is_set):
                job.out.put(chunk)
        except Exception as e:  # one bad request must not stop the engine
            job.out.put(_error_chunk(e))
        finally:
            job.out.put(None)

    def _run_together(self, job: GroupJob) -> None:
        """Step the sides in turns (one chunk each), or one after another."""
        sides = {
            side: self._chunks(request, job.cancel.is_set)
            for side, request in enumerate(job.requests)
        }
        try:
            while sides:
                for side, chunks in list(sides.items()):
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        del sides[side]
                        continue
                    except Exception as e:  # one failing side must not stop the others
                        del sides[side]
                        chunk = _error_chunk(e)
                    job.out.put((side, chunk))
                    if not job.interleave:
                        break
        finally:
            for chunks in sides.values():
                chunks.close()
            job.out.put(None)

    def _chunks(
        self, request: GenerateRequest, cancelled: Callable[[], bool]
    ) -> Iterator[Chunk]:
        """Every chunk of the request's ``n`` completions, in order."""
        for index in range(request.params.n):
            if cancelled():
                yield Chunk("", index=index, finish_reason="cancelled")
                continue
            yield from self._complete(request, index, cancelled)

    def _complete(
        self, request: GenerateRequest, index: int, cancelled: Callable[[], bool]
    ) -> Iterator[Chunk]:
        loaded = self._loaded(request.model)
        tokens = list(request.tokens)
        self._make_room(loaded, len(tokens) + request.params.max_tokens)
        cache, rest = self._prompt_cache.fetch_nearest_cache(request.model, tokens)
        if cache is None:
            cache, rest = make_prompt_cache(loaded.model), tokens
        cached = len(tokens) - len(rest)
        if cached == len(tokens):  # the model needs one token to produce logits
            trim_prompt_cache(cache, 1)
            cached -= 1
        speculation = None
        if request.speculation:
            draft = self._loaded(request.draft_model) if request.draft_model else None
            speculation = Speculation(
                draft, request.num_draft_tokens, request.speculation == "auto"
            )
        produced: list[int] = []
        yield from decode(
            loaded,
            tokens,
            request.params,
            cache=cache,
            cached_tokens=cached,
            index=index,
            stream=self._stream,
            produced=produced,
            speculation=speculation,
            cancelled=cancelled,
        )
        held = cache[0].offset
        self._prompt_cache.insert_cache(
            request.model, (tokens + produced)[:held], cache
        )

    def _make_room(self, loaded: LoadedModel, tokens: int) -> None:
        """Drop prompt-cache entries until a cache of ``tokens`` fits the budget."""
        need = loaded.info.kv_bytes_per_token * tokens
        over = mx.get_active_memory() + need - (self.memory_budget or 0)
        if over > 0 and self._prompt_cache.nbytes:
            self._prompt_cache.trim_to(n_bytes=self._prompt_cache.nbytes - over)
            mx.clear_cache()

    def _loaded(self, name: str) -> LoadedModel:
        if name not in self._models:
            raise ValueError(f"The model {name!r} is not loaded on this engine.")
        return self._models[name]


def _error_chunk(e: Exception) -> Chunk:
    return Chunk("", finish_reason="error", error=f"{type(e).__name__}: {e}")


def memory_info() -> MemoryInfo:
    """MLX's memory counters; call it on the worker thread (``Engine.memory``)."""
    total = mx.device_info().get("memory_size") or physical_memory()
    return MemoryInfo(
        active_gb=mx.get_active_memory() / 1e9,
        peak_gb=mx.get_peak_memory() / 1e9,
        cache_gb=mx.get_cache_memory() / 1e9,
        total_gb=total / 1e9,
    )
