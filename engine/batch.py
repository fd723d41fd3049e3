"""Sequences of one model decoding together: one batched forward per step.

Sequences join after their own prefill and leave between steps; each keeps its own
sampler (and random key) and logits processors. The KV caches live in mlx-lm's
left-padded ``BatchKVCache`` (one per layer); a sequence that leaves takes its
part out as a plain ``KVCache`` for the prompt cache. Modelled on mlx-lm's
``GenerationBatch`` (mlx_lm/generate.py), without its stop and length logic, which
``engine.sequence`` does per sequence. Runs on the engine worker thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine import exp_kernels
from engine.decode import PREFILL_STEP
from engine.kv_cache import BatchKVCache, KVCache
from engine.sampling import LogitsProcessor, Sampler

Step = list[tuple[int, mx.array]]  # a sequence's new tokens and (vocab,) logprobs


@dataclass
class Row:
    """What one sequence carries between steps.

    ``pending`` is its last sampled token (in the cache only once a step that feeds
    it is launched, see ``Batch``); ``seen`` the tokens its processors look at
    (uncached prompt + output), as in generate_step.
    """

    tag: Any  # the caller's handle for the sequence
    sampler: Sampler | None  # None: greedy
    processors: list[LogitsProcessor] = field(default_factory=list)
    seen: mx.array | None = None
    pending: int = -1

    def start(self, token: int) -> None:
        """Take the first token (sampled after prefill) as the pending one."""
        self.pending = token


def can_batch(cache: list[Any]) -> bool:
    """Whether a single-sequence cache can join a batch (plain KVCache layers)."""
    return bool(cache) and all(type(c) is KVCache for c in cache)


def prefill(
    model: nn.Module, cache: list[Any], tokens: list[int], stream: mx.Stream
) -> mx.array:
    """Feed ``tokens`` (at least one) to ``cache``; return the logits (1, vocab)
    after the last. Chunks like mlx-lm's generate_step, so logits match it.

    Note: ``cache`` is updated in place.
    """
    with mx.stream(stream):
        prompt = mx.array(tokens)
        while prompt.size > 1:
            n = min(PREFILL_STEP, prompt.size - 1)
            model(prompt[:n][None], cache=cache)
            mx.eval([c.state for c in cache])
            prompt = prompt[n:]
            mx.clear_cache()
        return model(prompt[None], cache=cache)[:, -1, :]


def sample_rows(
    rows: Sequence[Row], logits: mx.array, inputs: mx.array | None
) -> tuple[mx.array, mx.array]:
    """Each row's next token (B,) and logprobs (B, vocab), lazily.

    ``logits`` (B, vocab) are the rows' last logits; ``inputs`` (B,) the tokens just
    fed (None for the prompt's last token, already in ``seen``).

    Note: updates each row's ``seen``.
    """
    if any(row.processors for row in rows):
        processed = []
        for i, row in enumerate(rows):
            one = logits[i : i + 1]
            if row.processors:
                if inputs is not None:
                    step = inputs[i : i + 1]
                    row.seen = step if row.seen is None else mx.concat([row.seen, step])
                for processor in row.processors:
                    one = processor(row.seen, one)
            processed.append(one)
        logits = mx.concatenate(processed)
    logprobs = logits - exp_kernels.logsumexp(logits)
    greedy = mx.argmax(logprobs, axis=-1)
    if all(row.sampler is None for row in rows):
        return greedy, logprobs
    picks = [
        greedy[i : i + 1] if row.sampler is None else row.sampler(logprobs[i : i + 1])
        for i, row in enumerate(rows)
    ]
    return mx.concatenate([p.reshape(1) for p in picks]), logprobs


class Batch:
    """Sequences of ``model`` that step together (see the module docstring).

    ``step`` runs one step ahead, as mlx-lm's BatchGenerator does: it launches the
    next forward on the tokens just sampled, before reading them, so building that
    step's graph and handling this step's tokens overlap with computing it. The
    launched step covers ``rows[:ahead]``; rows that joined since get their first
    token one call later, and rows that leave drop their launched part.
    """

    def __init__(self, model: nn.Module, stream: mx.Stream) -> None:
        self.model, self.stream = model, stream
        self.rows: list[Row] = []
        self.cache: list[Any] | None = None  # one BatchKVCache per layer
        # The launched step: tokens (ahead,) and logprobs (ahead, vocab), lazy; their
        # inputs (rows[:ahead]'s last tokens) are already in the cache.
        self._ahead: tuple[mx.array, mx.array] | None = None

    @property
    def ahead(self) -> int:
        """Rows (the first ones) whose next step is launched."""
        return 0 if self._ahead is None else self._ahead[0].shape[0]

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: list[Row], caches: list[list[Any]]) -> None:
        """Join ``rows``; ``caches[i]`` holds row i's tokens before ``pending``.

        Rows may share one cache object (n completions of a prompt): it is copied.
        """
        if not rows:
            return
        layers = len(caches[0])
        merged = [
            BatchKVCache.merge([c[layer] for c in caches]) for layer in range(layers)
        ]
        if self.cache is None:
            self.cache = merged
        else:
            for mine, theirs in zip(self.cache, merged, strict=True):
                mine.extend(theirs)
        self.rows.extend(rows)

    def remove(self, indices: list[int]) -> list[list[Any]]:
        """Drop rows ``indices``; return each one's cache (a list of ``KVCache``)."""
        if not indices:
            return []
        assert self.cache is not None
        ahead = self.ahead
        with mx.stream(self.stream):
            caches = [[c.extract(i) for c in self.cache] for i in indices]
            for i, cache in zip(indices, caches, strict=True):
                if i < ahead:  # the launched step fed its last token: drop it
                    for c in cache:
                        c.trim(1)
                        c.keys = c.keys[..., : c.offset, :]
                        c.values = c.values[..., : c.offset, :]
            gone = set(indices)
            keep = [i for i in range(len(self.rows)) if i not in gone]
            if keep:
                for c in self.cache:
                    c.filter(keep)
            else:
                self.cache = None
            still = [i for i in keep if i < ahead]  # stay first: rows keep their order
            if self._ahead is not None:
                tokens, logprobs = self._ahead
                picked = mx.array(still)
                self._ahead = (tokens[picked], logprobs[picked]) if still else None
        self.rows = [self.rows[i] for i in keep]
        return caches

    def step(self, launched: Callable[[], None] = lambda: None) -> list[Step]:
        """Launch the next step of every row, then return the step launched before:
        one new token for each row it covered, none for rows that joined since.

        ``launched`` is called once the step's graph is built, just before this
        thread waits on MLX (with the GIL released); see ``Scheduler.hand_out``.
        """
        current, ahead = self._ahead, self.ahead
        with mx.stream(self.stream):
            parts = [current[0]] if current is not None else []
            if ahead < len(self.rows):  # joined since: feed their pending tokens
                parts.append(mx.array([row.pending for row in self.rows[ahead:]]))
            inputs = mx.concatenate(parts) if len(parts) > 1 else parts[0]
            logits = self.model(inputs[:, None], cache=self.cache)[:, -1, :]
            self._ahead = sample_rows(self.rows, logits, inputs)
            launched()
            mx.async_eval(*self._ahead)
        out: list[Step] = [[] for _ in self.rows]
        if current is not None:
            for i, token in enumerate(current[0].tolist()):
                self.rows[i].pending = token
                out[i] = [(token, current[1][i])]
        return out
