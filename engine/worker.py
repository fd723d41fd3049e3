"""The one thread that touches MLX: it loads models and runs generations from a queue.

MLX streams belong to the thread that made them (DESIGN.md, "One thread owns MLX"),
so callers on any thread hand work to this thread and read chunks from a queue.
Generations of one model decode together, one batched forward per step
(``engine.scheduler``): requests join between steps and leave when they end; calls
(loads, memory reads) run between steps. A group task (``generate_together``, the
web UI's Compare tab) starts its sides together so they stream side by side, one
token each per step; each keeps its own cache, random key and stats.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from engine.decode import LoadedModel
from engine.jobs import Ticket
from engine.kv_cache import LRUPromptCache
from engine.memory_budget import default_memory_budget, physical_memory
from engine.scheduler import Scheduler
from engine.schema import MemoryInfo, SamplingParams

DEFAULT_MAX_QUEUE = 64
# A generation that finds the engine idle waits this long for company before it
# starts. Clients that start together (a burst of API calls) then decode in one batch
# from the first step; otherwise the first goes alone through mlx-lm's loop and the
# rest batch beside it, two forwards per step. Seconds; small against any prefill.
BURST_WINDOW_S = 0.01
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
    """Owns MLX: models, KV caches, the prompt cache and the generation stream.

    ``max_queue`` bounds the tasks waiting to start, and the generation tasks in
    flight to ``max_queue + 1`` (what one running task and a full queue held
    when tasks ran one at a time).
    """

    def __init__(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        memory_budget: int | None = None,
        burst_window_s: float = BURST_WINDOW_S,
    ) -> None:
        super().__init__(name="silica-engine", daemon=True)
        self.memory_budget = memory_budget  # None: the device's default, set in run
        self.burst_window_s = burst_window_s
        self._max_queue = max_queue
        self._tasks: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = self._in_flight = 0  # generation tasks; under _lock
        self._models: dict[str, LoadedModel] = {}
        self._prompt_cache = LRUPromptCache(
            max_size=PROMPT_CACHE_ENTRIES, max_bytes=prompt_cache_bytes
        )
        self._stream: mx.Stream | None = None

    def call(self, fn: Callable[[dict[str, LoadedModel]], Any]) -> Future:
        """Run ``fn(models)`` on the worker thread (between decode steps); the
        future holds its result."""
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
        self._put(("generate", job, None), counted=True)
        return job

    def generate_together(
        self, requests: Sequence[GenerateRequest], *, interleave: bool = True
    ) -> GroupJob:
        """Queue generations as one task: side by side when ``interleave`` (they
        start together), else one after another.

        Raises:
            EngineBusy: The queue is full.
            EngineDied: The worker thread is gone.
        """
        job = GroupJob(tuple(requests), interleave)
        self._put(("together", job, None), counted=True)
        return job

    @property
    def queued(self) -> int:
        """Tasks waiting to start (running ones not included)."""
        return self._waiting

    @property
    def max_queue(self) -> int:
        """Tasks that may wait at most; more raise ``EngineBusy``."""
        return self._max_queue

    def stop(self, timeout: float | None = 10.0) -> None:
        """End running generations as cancelled, drop queued ones, end the thread."""
        if self.is_alive():
            self._tasks.put(("stop", None, None))
            self.join(timeout)

    def _put(self, task: tuple, *, counted: bool = False) -> None:
        """Queue a task; ``counted`` ones (generations) also count as in flight."""
        if not self.is_alive():
            raise EngineDied("The engine thread has stopped; create a new engine.")
        with self._lock:
            if self._waiting >= self._max_queue or (
                counted and self._in_flight > self._max_queue
            ):
                raise EngineBusy(
                    f"The engine queue is full ({self._max_queue} requests "
                    "waiting); retry later."
                )
            self._waiting += 1
            self._in_flight += counted
        self._tasks.put(task)

    def _task_started(self) -> None:
        with self._lock:
            self._waiting -= 1

    def run(self) -> None:
        self._stream = mx.new_stream(mx.default_device())
        if self.memory_budget is None:
            self.memory_budget = default_memory_budget(mx.device_info())
        scheduler = Scheduler(
            self._models, self._prompt_cache, self._stream, make_room=self._make_room
        )
        try:
            while self._take(scheduler):
                scheduler.tick()
            scheduler.drain()
        finally:
            self._models.clear()
            mx.clear_streams()

    def _take(self, scheduler: Scheduler) -> bool:
        """Run queued calls and hand queued jobs to the scheduler; wait for work
        when it has none (and for ``burst_window_s`` more after the first job of an
        idle spell). False once asked to stop."""
        idle = not scheduler.busy
        while True:
            try:
                if not scheduler.busy:
                    task = self._tasks.get()
                elif idle:  # the first job of an idle spell: wait for company once
                    idle = False
                    task = self._tasks.get(timeout=self.burst_window_s)
                else:
                    task = self._tasks.get_nowait()
            except queue.Empty:
                return True
            kind, payload, future = task
            if kind == "stop":
                return False
            if kind == "call":
                scheduler.hand_out()  # a call may take long: chunks go out first
                self._task_started()
                self._run_call(payload, future)
            else:
                scheduler.submit(self._ticket(kind, payload))

    def _ticket(self, kind: str, job: Job | GroupJob) -> Ticket:
        """A scheduler ticket for ``job``: chunks to ``job.out``, then None."""
        if kind == "together":
            sides, interleave = list(enumerate(job.requests)), job.interleave
            put = lambda side, chunk: job.out.put((side, chunk))  # noqa: E731
        else:
            sides, interleave = [(0, job.request)], True
            put = lambda side, chunk: job.out.put(chunk)  # noqa: E731

        def done() -> None:
            with self._lock:
                self._in_flight -= 1
            job.out.put(None)

        return Ticket(
            deque(sides), put, done, job.cancel, interleave, started=self._task_started
        )

    def _run_call(self, fn: Callable, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(self._models))
        except Exception as e:  # noqa: BLE001 - the caller receives it through the future
            future.set_exception(e)

    def _make_room(self, loaded: LoadedModel, tokens: int) -> None:
        """Drop prompt-cache entries until a cache of ``tokens`` fits the budget."""
        need = loaded.info.kv_bytes_per_token * tokens
        over = mx.get_active_memory() + need - (self.memory_budget or 0)
        if over > 0 and self._prompt_cache.nbytes:
            self._prompt_cache.trim_to(n_bytes=self._prompt_cache.nbytes - over)
            mx.clear_cache()


def memory_info() -> MemoryInfo:
    """MLX's memory counters; call it on the worker thread (``Engine.memory``)."""
    total = mx.device_info().get("memory_size") or physical_memory()
    return MemoryInfo(
        active_gb=mx.get_active_memory() / 1e9,
        peak_gb=mx.get_peak_memory() / 1e9,
        cache_gb=mx.get_cache_memory() / 1e9,
        total_gb=total / 1e9,
    )
