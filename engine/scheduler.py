"""Continuous batching on the engine worker: admit jobs between steps, step, fan out.

Completions of one model decode together (``engine.batch``; with prompt lookup,
``engine.batch_speculative``; with a draft model, ``engine.batch_draft``): a new
request is prefilled on its own (reusing the prompt cache), joins its model's batch,
and leaves when it ends, its KV going back to the prompt cache. What cannot batch
("auto" with a draft model, a cache of another kind) runs through ``engine.decode``
one chunk per tick. Runs on the worker thread only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx

from engine import fast_blas
from engine.batch import Batch, prefill, sample_rows
from engine.batch_draft import prefill_draft
from engine.batch_rows import (
    BatchKey,
    batch_key,
    batch_kind,
    kv_options,
    new_batch,
    new_row,
)
from engine.batch_speculative import SpecBatch
from engine.decode import LoadedModel, Speculation, decode
from engine.draft_length import measured_costs
from engine.jobs import Running, Solo, Ticket, error_chunk
from engine.kv_cache import (
    LRUPromptCache,
    make_prompt_cache,
    trim_prompt_cache,
)
from engine.schema import Chunk, Stats
from engine.sequence import Sequence

MAX_BATCH = 16  # completions decoding at once; more wait their turn


class Scheduler:
    """Holds the batches of the worker's models and the jobs waiting for a slot.

    Args:
        models: The worker's models by name (read at each admission).
        prompt_cache: The LRU prompt cache; ended completions put their KV there.
        stream: The worker's MLX stream.
        make_room: Frees prompt-cache memory for a cache of that many tokens.
        max_batch: Completions that decode at once.
    """

    def __init__(
        self,
        models: dict[str, LoadedModel],
        prompt_cache: LRUPromptCache,
        stream: mx.Stream,
        *,
        make_room: Callable[[LoadedModel, int], None],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._models, self._prompt_cache, self._stream = models, prompt_cache, stream
        self._make_room, self._max_batch = make_room, max_batch
        self.waiting: deque[Ticket] = deque()
        self._batches: dict[BatchKey, Batch | SpecBatch] = {}
        self._solos: list[Solo] = []
        self._held: list[tuple[Running, Chunk]] = []  # see hand_out

    @property
    def busy(self) -> bool:
        """Whether any job waits or runs."""
        return bool(self.waiting or self._batches or self._solos)

    @property
    def batches(self) -> dict[BatchKey, int]:
        """Rows decoding in each batch now, by (model, kind, draft model)."""
        return {key: len(batch) for key, batch in self._batches.items()}

    def submit(self, ticket: Ticket) -> None:
        """Queue a job; it starts at the next tick with a free slot."""
        self.waiting.append(ticket)

    def tick(self) -> None:
        """Admit waiting jobs, then step every batch and solo completion once."""
        self._admit()
        for key in list(self._batches):
            self._step_batch(key)
        if self._solos or not self._batches:
            self.hand_out()
        for solo in list(self._solos):
            self._step_solo(solo)

    def hand_out(self) -> None:
        """Send the chunks that batch steps returned since the last call.

        A batch calls this once its next step's graph is built, just before the
        worker waits on MLX with the GIL released: so the clients' threads take
        their chunks (and screen them) during that wait, not while the worker builds
        the graph (8 streams decoded ~11% faster, docs/BENCHMARKS.md). Anything else
        that would make them wait longer (a prefill, a solo step, a last chunk, a
        call the worker runs between ticks) hands them out first.
        """
        held, self._held = self._held, []
        for run, chunk in held:
            run.emit(chunk)

    def drain(self) -> None:
        """End every job now as cancelled (the worker is stopping)."""
        for ticket in self.waiting:
            ticket.cancel.set()
        for batch in self._batches.values():
            for row in batch.rows:
                row.tag.ticket.cancel.set()
        for solo in self._solos:
            solo.ticket.cancel.set()
        while self.busy:
            self.tick()

    def _active(self) -> int:
        return sum(len(b) for b in self._batches.values()) + len(self._solos)

    def _admit(self) -> None:
        while self.waiting and self._active() < self._max_batch:
            ticket = self.waiting.popleft()
            ticket.started()
            count = (
                len(ticket.sides) if ticket.interleave else min(1, len(ticket.sides))
            )
            if not count:
                ticket.done()
            self._start_sides(ticket, count)

    def _start_sides(self, ticket: Ticket, count: int) -> None:
        """Start the next ``count`` sides; their completions count as running first,
        so the ticket cannot end while they start."""
        sides = [ticket.sides.popleft() for _ in range(count)]
        ticket.running += sum(request.params.n for _, request in sides)
        # A completion with nothing to batch with decodes through mlx-lm's loop: a plain
        # cache needs no mask or per-row offsets, which a batch of one pays for. (The
        # worker's burst window lets simultaneous requests arrive before this check.)
        alone = (
            count == 1
            and sides[0][1].params.n == 1
            and not self.waiting
            and not self._active()
        )
        for side, request in sides:
            self._start(ticket, side, request, alone=alone)

    def _start(
        self, ticket: Ticket, side: int, request: Any, *, alone: bool = False
    ) -> None:
        """Prefill a request's prompt and let its ``n`` completions join a batch."""
        n = request.params.n
        if ticket.cancel.is_set():
            stats = Stats(prompt_tokens=len(request.tokens))
            for index in range(n):
                chunk = Chunk("", index, finish_reason="cancelled", stats=stats)
                self._ended(ticket, side, chunk)
            return
        try:
            loaded = self._loaded(request.model)
            draft = self._loaded(request.draft_model) if request.draft_model else None
            kind = batch_kind(request, loaded, draft)
            if kind is None or alone:
                self._solos.append(Solo(ticket, side, self._solo(request, ticket), n))
                return
            self._join(ticket, side, request, loaded, kind)
        except Exception as e:  # one bad request must not stop the engine
            for index in range(n):
                self._ended(ticket, side, error_chunk(e, index))

    def _join(self, ticket, side, request, loaded, kind) -> None:
        self.hand_out()
        start, tokens, params = (
            time.perf_counter(),
            list(request.tokens),
            request.params,
        )
        self._make_room(loaded, params.n * (len(tokens) + params.max_tokens))
        cache, cached = self._fetch(request.model, tokens, loaded)
        logits = prefill(loaded.model, cache, tokens[cached:], self._stream)
        draft_cache = None
        if kind == "draft":  # a cache of its own that holds what the target's does
            draft = self._loaded(request.draft_model)
            self._make_room(draft, params.n * (len(tokens) + params.max_tokens))
            draft_cache = prefill_draft(draft.drafting(), tokens, self._stream)
        runs, rows = [], []
        for index in range(params.n):
            sequence = Sequence(
                loaded, tokens, params, index=index, cached_tokens=cached, start=start
            )
            runs.append(Running(ticket, side, request.model, tokens, sequence))
            rows.append(new_row(kind, runs[-1], request, index, cached))
        with mx.stream(self._stream):
            first, logprobs = sample_rows(rows, _repeat(logits, len(rows)), None)
            mx.eval(first, logprobs)
        joining = []
        for i, (run, row, token) in enumerate(
            zip(runs, rows, first.tolist(), strict=True)
        ):
            run.output.append(token)
            if chunk := run.sequence.push(token, logprobs[i]):
                run.emit(chunk)
            if run.sequence.finish_reason:
                self._end(run, cache)
            else:
                row.start(token)
                joining.append(row)
        if joining:
            self._add(request, kind, joining, cache, draft_cache)

    def _add(self, request, kind, rows, cache, draft_cache) -> None:
        """Let ``rows`` (of one prompt, whose ``cache`` they share) join their batch."""
        key = batch_key(request, kind)
        if key not in self._batches:
            draft = self._loaded(request.draft_model) if kind == "draft" else None
            loaded = self._loaded(request.model)
            self._batches[key] = new_batch(kind, loaded, self._stream, draft=draft)
        caches = [cache] * len(rows)
        if draft_cache is None:
            self._batches[key].add(rows, caches)
        else:
            self._batches[key].add(rows, caches, draft_caches=[draft_cache] * len(rows))

    def _fetch(
        self, name: str, tokens: list[int], loaded: LoadedModel
    ) -> tuple[list[Any], int]:
        """A copy of the longest cached prefix of ``tokens`` (leaving one to feed)."""
        kv = kv_options(loaded)
        if kv.active:  # quantized or rotating caches are not shared
            return kv.make(loaded.model), 0
        cache, rest = self._prompt_cache.fetch_nearest_cache(name, tokens)
        if cache is None:
            cache, rest = make_prompt_cache(loaded.model), tokens
        cached = len(tokens) - len(rest)
        if cached == len(tokens):  # the model needs one token to produce logits
            trim_prompt_cache(cache, 1)
            cached -= 1
        return cache, cached

    def _step_batch(self, key: BatchKey) -> None:
        batch = self._batches[key]
        gone = [i for i, r in enumerate(batch.rows) if r.tag.ticket.cancel.is_set()]
        self._leave(key, gone, "cancelled")
        if key not in self._batches:
            return
        try:
            steps = batch.step(self.hand_out)
        except Exception as e:  # the batch is lost; its jobs end with the error
            del self._batches[key]
            for row in batch.rows:
                self._ended(
                    row.tag.ticket, row.tag.side, error_chunk(e, row.tag.sequence.index)
                )
            return
        done = []
        for i, (row, tokens) in enumerate(zip(batch.rows, steps, strict=True)):
            run: Running = row.tag
            for token, logprobs in tokens:
                run.output.append(token)
                # A round can step past a stop; those tokens only fill the cache.
                ended = run.sequence.finish_reason is not None
                if not ended and (chunk := run.sequence.push(token, logprobs)):
                    self._held.append((run, chunk))
            if run.sequence.finish_reason:
                done.append(i)
        self._leave(key, done, None)

    def _leave(self, key: BatchKey, indices: list[int], reason: str | None) -> None:
        """Take rows out of a batch and end their completions."""
        if not indices:
            return
        batch = self._batches[key]
        runs = [batch.rows[i].tag for i in indices]
        for run, cache in zip(runs, batch.remove(indices), strict=True):
            run.sequence.finish_reason = run.sequence.finish_reason or reason
            self._end(run, cache)
        if not batch:
            del self._batches[key]

    def _end(self, run: Running, cache: list[Any]) -> None:
        """Send a completion's last chunk and keep its KV in the prompt cache."""
        held = cache[0].offset
        self._prompt_cache.insert_cache(
            run.model, (run.tokens + run.output)[:held], cache
        )
        self._ended(run.ticket, run.side, run.sequence.finish())

    def _ended(self, ticket: Ticket, side: int, chunk: Chunk | None) -> None:
        self.hand_out()  # the completion's chunks before its last
        if chunk is not None:
            ticket.put(side, chunk)
        ticket.running -= 1
        if ticket.running == 0:
            if ticket.sides:  # one after another: start the next side
                self._start_sides(ticket, 1)
            else:
                ticket.done()

    def _step_solo(self, solo: Solo) -> None:
        try:
            chunk = next(solo.chunks)
        except StopIteration:
            self._solos.remove(solo)
            solo.ticket.running -= solo.completions - 1
            self._ended(solo.ticket, solo.side, None)
            return
        except Exception as e:  # one bad request must not stop the engine
            self._solos.remove(solo)
            solo.ticket.running -= solo.completions - 1
            self._ended(solo.ticket, solo.side, error_chunk(e))
            return
        solo.ticket.put(solo.side, chunk)

    def _solo(self, request: Any, ticket: Ticket) -> Iterator[Chunk]:
        """Every chunk of the request's ``n`` completions, one after another."""
        for index in range(request.params.n):
            if ticket.cancel.is_set():
                yield Chunk("", index=index, finish_reason="cancelled")
                continue
            yield from self._complete(request, index, ticket.cancel.is_set)

    def _complete(
        self, request: Any, index: int, cancelled: Callable[[], bool]
    ) -> Iterator[Chunk]:
        loaded = self._loaded(request.model)
        tokens = list(request.tokens)
        self._make_room(loaded, len(tokens) + request.params.max_tokens)
        cache, cached = self._fetch(request.model, tokens, loaded)
        draft = self._loaded(request.draft_model) if request.draft_model else None
        speculation = None
        if request.speculation:
            costs = measured_costs(loaded, draft, fast_blas.cache_dir(), self._stream)
            auto = request.speculation == "auto"
            speculation = Speculation(draft, request.num_draft_tokens, auto, costs)
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
        if kv_options(loaded).active:
            return
        held = cache[0].offset
        self._prompt_cache.insert_cache(
            request.model, (tokens + produced)[:held], cache
        )

    def _loaded(self, name: str) -> LoadedModel:
        if name not in self._models:
            raise ValueError(f"The model {name!r} is not loaded on this engine.")
        return self._models[name]


def _repeat(logits: mx.array, n: int) -> mx.array:
    return logits if n == 1 else mx.broadcast_to(logits, (n, logits.shape[-1]))
