"""Keep the ranks of a sharded model in lockstep: rank 0 announces, the others follow.

Every forward of a sharded model runs collectives (``all_sum`` in tensor mode,
``send``/``recv``/``all_gather`` in pipeline mode), so every rank must run the same
forward on the same tokens at the same time. Rank 0 (which samples, detokenizes
and streams) announces each forward with one ``mx.distributed.all_sum`` of a small
int32 header (the others add zeros): command, token count, the KV-cache offset the
tokens start at, and up to ``INLINE`` tokens (a longer prefill chunk follows in a
second ``all_sum``). The other ranks replay it on their own cache, trimming it back
to that offset first, so speculative rollbacks need no extra messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from engine.kv_cache import make_prompt_cache, trim_prompt_cache

FORWARD, STOP = 1, 2
INLINE = 12  # tokens sent in the header: a decode step or a speculative verify
HEADER = 4 + INLINE  # command, token count, cache offset, step number, tokens


class OutOfStep(RuntimeError):
    """A follower got a forward for a cache position it does not hold."""


@dataclass(frozen=True)
class Forward:
    """One announced forward: ``tokens`` go in at cache position ``offset``.

    ``offset`` is -1 for a forward without a KV cache.
    """

    command: int
    tokens: tuple[int, ...] = ()
    offset: int = 0
    step: int = 0


def announce(group: Any, forward: Forward) -> None:
    """Rank 0: send ``forward`` to every rank (blocks until all have joined)."""
    tokens = list(forward.tokens)
    header = [forward.command, len(tokens), forward.offset, forward.step]
    inline = tokens if len(tokens) <= INLINE else []
    head = mx.array(header + inline + [0] * (INLINE - len(inline)), dtype=mx.int32)
    mx.eval(mx.distributed.all_sum(head, group=group, stream=mx.cpu))
    if len(tokens) > INLINE:
        rest = mx.array(tokens, dtype=mx.int32)
        mx.eval(mx.distributed.all_sum(rest, group=group, stream=mx.cpu))


def receive(group: Any) -> Forward:
    """Ranks > 0: wait for rank 0's next announcement."""
    zeros = mx.zeros((HEADER,), dtype=mx.int32)
    head = mx.distributed.all_sum(zeros, group=group, stream=mx.cpu)
    command, count, offset, step, *inline = head.tolist()
    if count > INLINE:
        zeros = mx.zeros((count,), dtype=mx.int32)
        tokens = mx.distributed.all_sum(zeros, group=group, stream=mx.cpu).tolist()
    else:
        tokens = inline[:count]
    return Forward(command, tuple(tokens), offset, step)


class StepClock:
    """When the step in flight began (for rank 0's watchdog); None between steps."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.steps = 0

    def stalled_for(self) -> float:
        """Seconds the step in flight has taken so far; 0 between steps."""
        started = self.started
        return 0.0 if started is None else time.monotonic() - started


class LockstepModel:
    """Rank 0's handle on a sharded model: each call is announced, then evaluated.

    It runs one sequence at a time: a forward must start a new cache (offset 0) or
    continue (or roll back) the cache of the previous forward. Anything else (a
    batch, a cache from the prompt cache) is refused before it is announced, so
    the other ranks never see it. ``on_lost`` turns a failed collective into the
    error the caller raises.
    """

    def __init__(
        self,
        model: Any,
        group: Any,
        clock: StepClock,
        on_lost: Callable[[Exception], Exception],
    ) -> None:
        self.model, self.group, self.clock = model, group, clock
        self._on_lost = on_lost
        self._cache_id: int | None = None
        self._held = 0  # tokens the current cache holds after the last forward
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # layers, make_cache, parameters, ...
        return getattr(self.model, name)

    def __call__(self, inputs: mx.array, cache: list | None = None, **kwargs: Any):
        offset = self._check(inputs, cache, kwargs)
        forward = Forward(FORWARD, tuple(inputs[0].tolist()), offset, self.clock.steps)
        with self._lock:
            self.clock.started = time.monotonic()
            try:
                announce(self.group, forward)
                out = self.model(inputs, cache=cache)
                mx.eval(out)  # all ranks finish this forward's collectives now
            except RuntimeError as e:  # the ring backend lost a peer
                raise self._on_lost(e) from e
            finally:
                self.clock.started = None
            self.clock.steps += 1
        if cache:
            self._cache_id, self._held = id(cache), offset + inputs.shape[1]
        return out

    def _check(self, inputs: mx.array, cache: list | None, kwargs: dict) -> int:
        if kwargs.get("input_embeddings") is not None:
            raise ValueError("A distributed model takes token ids, not embeddings.")
        if inputs.ndim != 2 or inputs.shape[0] != 1:
            raise ValueError(
                f"A distributed model runs one sequence at a time, got a batch of "
                f"shape {inputs.shape}."
            )
        if not cache:
            return -1
        offset = cache[0].offset
        same = id(cache) == self._cache_id and offset <= self._held
        if offset != 0 and not same:
            raise ValueError(
                "A distributed model cannot resume a cache it did not fill "
                "(prompt cache, side-by-side); run one request at a time."
            )
        return offset


def replay(model: Any, forward: Forward, cache: list | None) -> list | None:
    """Ranks > 0: run ``forward`` on ``cache`` (new at offset 0); return the cache.

    Raises:
        OutOfStep: The cache holds fewer tokens than the forward starts at.
    """
    if forward.offset < 0:
        cache = None
    elif forward.offset == 0 or cache is None:
        cache = make_prompt_cache(model)
    held = cache[0].offset if cache else 0
    if cache and held < forward.offset:
        raise OutOfStep(
            f"step {forward.step} starts at token {forward.offset}, this rank holds "
            f"{held}; restart the group."
        )
    if cache and held > forward.offset:
        trim_prompt_cache(cache, held - forward.offset)
    mx.eval(model(mx.array(forward.tokens)[None], cache=cache))
    return cache


def follow_forwards(model: Any, group: Any) -> int:
    """Ranks > 0: replay rank 0's forwards until it says stop; returns the count.

    Raises:
        RuntimeError: The ring backend lost rank 0 (or another peer).
        OutOfStep: This rank's cache no longer matches rank 0's.
    """
    cache, steps = None, 0
    while (forward := receive(group)).command == FORWARD:
        cache = replay(model, forward, cache)
        steps += 1
    if forward.command != STOP:
        raise OutOfStep(f"unknown command {forward.command} from rank 0")
    return steps
