"""Prompt-lookup speculation for a batch: per-sequence drafts, one verify forward.

Each round every sequence drafts its own tokens (none is fine); the rows are padded
to the longest, verified in one batched forward, and each sequence accepts by the
exact rule of ``engine.acceptance``. Rollback in the left-padded ``BatchKVCache``:
trim every row by the fewest rejections, then shift each row with more rejections
right by the difference and add it to that row's left padding; its keys already
carry RoPE for their true positions and ``offset = idx - left_padding`` stays the
row's true length, so the mask and positions stay right. Runs on the worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from engine import exp_kernels
from engine.acceptance import accept_drafts
from engine.batch import Batch, Row, Step
from engine.draft_choice import SourceChooser
from engine.draft_length import next_k
from engine.kv_cache import dynamic_roll
from engine.prompt_lookup import lookup_drafts
from engine.sampling import Scale, normalize, to_key, to_scale
from engine.speculative import MAX_ADAPTIVE_DRAFT, SpecStats


@dataclass
class SpecRow(Row):
    """A sequence that speculates: its history, k, random key and counters."""

    history: list[int] = field(default_factory=list)  # prompt + every token out
    seen_from: int = 0  # processors see history[seen_from:]
    scale: Scale | None = None  # None is greedy
    key: mx.array | None = None
    k: int = 4
    k_max: int = MAX_ADAPTIVE_DRAFT
    stats: SpecStats = field(default_factory=SpecStats)
    chooser: SourceChooser | None = None  # auto: lookup or plain, per round

    @classmethod
    def make(cls, run: Any, request: Any, *, index: int, **row: Any) -> SpecRow:
        """The row of completion ``index`` of ``request`` (``run``: its handle)."""
        params, k = request.params, request.num_draft_tokens
        key = None
        if params.temperature:  # after the first token's draw, from the same key
            key = mx.random.split(to_key(params, index))[0]
        spec = cls(
            run,
            history=list(run.tokens),
            scale=to_scale(params),
            key=key,
            k=k,
            k_max=max(MAX_ADAPTIVE_DRAFT, k),
            chooser=SourceChooser() if request.speculation == "auto" else None,
            **row,
        )
        run.sequence.spec = spec.stats
        return spec

    def start(self, token: int) -> None:
        self.history.append(token)
        self.pending = token

    def draft(self, budget: int) -> tuple[list[int], str]:
        """Up to k lookup drafts (fewer than ``budget`` tokens) and their source."""
        k = min(self.k, budget - 1)
        found = lookup_drafts(self.history, k) if k > 0 else []
        if self.chooser is None:
            return found, "lookup"
        source = self.chooser.pick(["lookup", "plain"] if found else ["plain"])
        return (found if source == "lookup" else []), source

    def split_keys(self, count: int) -> mx.array | None:
        if self.scale is None:
            return None
        self.key, round_key = mx.random.split(self.key)
        return mx.random.split(round_key, count)


class SpecBatch(Batch):
    """A ``Batch`` whose step is a speculation round for every row."""

    rows: list[SpecRow]

    def step(self, launched: Callable[[], None] = lambda: None) -> list[Step]:
        """Draft, verify in one forward, accept per row; each row gets 1+ tokens.
        ``launched``: see ``Batch.step``."""
        start = time.perf_counter()
        drafts = [row.draft(_budget(row)) for row in self.rows]
        width = 1 + max(len(d) for d, _ in drafts)
        # Rows with fewer drafts are padded; their padding is rejected like a draft.
        inputs = [
            [row.pending, *d, *[row.pending] * (width - 1 - len(d))]
            for row, (d, _) in zip(self.rows, drafts, strict=True)
        ]
        middle = time.perf_counter()
        with mx.stream(self.stream):
            logits = self.model(mx.array(inputs), cache=self.cache).astype(mx.float32)
            logprobs = self._logprobs(logits, [d for d, _ in drafts])
            launched()
            accepted = self._accept(logprobs, [d for d, _ in drafts])
            self._rollback([width - 1 - n for n, _ in accepted])
        times = (middle - start, time.perf_counter() - middle)
        out = []
        for row, lp, (d, source), (n, token) in zip(
            self.rows, logprobs, drafts, accepted, strict=True
        ):
            new = [*d[:n], token]
            row.history.extend(new)
            row.pending = token
            _count(row, len(d), n, source, times)
            out.append([(t, lp[j]) for j, t in enumerate(new)])
        return out

    def _logprobs(self, logits: mx.array, drafts: list[list[int]]) -> list[mx.array]:
        """Each row's (len(drafts) + 1, vocab) log-probabilities, processed."""
        rows = []
        plain = None
        for i, (row, d) in enumerate(zip(self.rows, drafts, strict=True)):
            if not row.processors:
                if plain is None:
                    plain = logits - exp_kernels.logsumexp(logits)
                rows.append(plain[i, : len(d) + 1])
                continue
            seen = mx.array(row.history[row.seen_from :] + d)
            size = len(row.history) - row.seen_from
            rows.append(
                normalize(
                    logits[i, : len(d) + 1],
                    lambda j, s=seen, z=size: s[: z + j],
                    row.processors,
                )
            )
        return rows

    def _accept(
        self,
        logprobs: list[mx.array],
        drafts: list[list[int]],
        qs: list[mx.array | None] | None = None,
    ) -> list[tuple[int, int]]:
        """Per row: drafts accepted and the token after them (one eval for greedy).

        ``qs[i]`` (k, vocab) is row i's draft distribution; None: one-hot (lookup).
        """
        best = [
            mx.argmax(lp, axis=-1) if row.scale is None else None
            for row, lp in zip(self.rows, logprobs, strict=True)
        ]
        mx.eval([b for b in best if b is not None], logprobs)
        qs = qs or [None] * len(drafts)
        out = []
        for row, lp, d, q, b in zip(self.rows, logprobs, drafts, qs, best, strict=True):
            if b is None:  # sampled: the exact rule, with this row's keys
                out.append(
                    accept_drafts(lp, d, q, row.scale, row.split_keys(len(d) + 2))
                )
                continue
            b = b.tolist()  # greedy: accept_drafts's rule without its eval per row
            n = next((i for i in range(len(d)) if d[i] != b[i]), len(d))
            out.append((n, b[n]))
        return out

    def _rollback(self, rejected: list[int]) -> None:
        """Drop each row's rejected positions from the cache (see the module doc)."""
        rollback(self.cache, rejected)


def rollback(caches: list[Any], rejected: list[int]) -> None:
    """Drop the last ``rejected[i]`` positions of row i from every BatchKVCache:
    trim all by the fewest, shift the others right (see the module doc).

    Note: ``caches`` are updated in place.
    """
    low = min(rejected)
    extra = [r - low for r in rejected]
    shifted = [i for i, e in enumerate(extra) if e]
    for c in caches:
        c.trim(low)
        if shifted:
            _shift(c, shifted, [extra[i] for i in shifted], mx.array(extra))


def _shift(c: Any, rows: list[int], by: list[int], extra: mx.array) -> None:
    """Move ``rows`` of a BatchKVCache right by ``by``; the rejected tail wraps
    into the left padding, which the mask hides."""
    index, amount = mx.array(rows), mx.array(by)[:, None]
    end = c._idx
    for name in ("keys", "values"):
        part = getattr(c, name)[index, :, :end]  # (R, H, end, D)
        getattr(c, name)[index, :, :end] = dynamic_roll(part, amount, axis=2)
    c.left_padding = c.left_padding + extra
    c.offset = c.offset - extra


def _budget(row: SpecRow) -> int:
    """Tokens the row may still emit."""
    return row.tag.sequence.max_tokens - len(row.tag.output)


def _count(row: SpecRow, drafted: int, n: int, source: str, times: tuple) -> None:
    row.stats.drafted += drafted
    row.stats.accepted += n
    row.stats.emitted += n + 1
    row.stats.target_forwards += 1
    row.stats.draft_time_s += times[0]
    row.stats.verify_time_s += times[1]
    row.k = next_k(row.k, row.k_max, drafted, n)
    if row.chooser is not None:
        row.chooser.record(source, n + 1, drafted)
