"""Sequences of one model decoding together: one batched forward per step.

Sequences join after their own prefill and leave between steps; each keeps its own
sampler (and random key) and logits processors. The KV caches live in mlx-lm's
left-padded ``BatchKVCache`` (one per layer); a sequence that leaves takes its
part out as a plain ``KVCache`` for the prompt cache. Modelled on mlx-lm's
``GenerationBatch`` (mlx_lm/generate.py), without its stop and length logic, which
``engine.sequence`` does per sequence. Runs on the engine worker thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.decode import PREFILL_STEP
from engine.kv_cache import BatchKVCache, KVCache
from engine.sampling import LogitsProcessor, Sampler

Step = list[tuple[int, mx.array]]  # a sequence's new tokens and (vocab,) logprobs


@dataclass
class Row:
    """What one sequence carries between steps.

    ``pending`` is its last sampled token, not yet in the cache; ``seen`` the
    tokens its processors look at (uncached prompt + output), as in generate_step.
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
    rows: Sequence[Row], logits: mx.array, inputs: list[int] | None
) -> tuple[mx.array, mx.array]:
    """Each row's next token (B,) and logprobs (B, vocab), lazily.

    ``logits`` (B, vocab) are the rows' last logits; ``inputs`` the tokens just fed
    (None for the prompt's last token, already in ``seen``).

    Note: updates each row's ``seen``.
    """
    if any(row.processors for row in rows):
        processed = []
        for i, row in enumerate(rows):
            one = logits[i : i + 1]
            if row.processors:
                if inputs is not None:
                    step = mx.array(inputs[i : i + 1])
                    row.seen = step if row.seen is None else mx.concat([row.seen, step])
                for processor in row.processors:
                    one = processor(row.seen, one)
            processed.append(one)
        logits = mx.concatenate(processed)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    greedy = mx.argmax(logprobs, axis=-1)
    if all(row.sampler is None for row in rows):
        return greedy, logprobs
    picks = [
        greedy[i : i + 1] if row.sampler is None else row.sampler(logprobs[i : i + 1])
        for i, row in enumerate(rows)
    ]
    return mx.concatenate([p.reshape(1) for p in picks]), logprobs


class Batch:
    """Sequences of ``model`` that step together (see the module docstring)."""

    def __init__(self, model: nn.Module, stream: mx.Stream) -> None:
        self.model, self.stream = model, stream
        self.rows: list[Row] = []
        self.cache: list[Any] | None = None  # one BatchKVCache per layer

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
        with mx.stream(self.stream):
            caches = [[c.extract(i) for c in self.cache] for i in indices]
            gone = set(indices)
            keep = [i for i in range(len(self.rows)) if i not in gone]
            if keep:
                for c in self.cache:
                    c.filter(keep)
            else:
                self.cache = None
        self.rows = [self.rows[i] for i in keep]
        return caches

    def step(self) -> list[Step]:
        """One forward of every row's pending token; each row gets one new token."""
        inputs = [row.pending for row in self.rows]
        with mx.stream(self.stream):
            logits = self.model(mx.array(inputs)[:, None], cache=self.cache)[:, -1, :]
            tokens, logprobs = sample_rows(self.rows, logits, inputs)
            mx.eval(tokens, logprobs)
        out = []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):
            row.pending = token
            out.append([(token, logprobs[i])])
        return out
