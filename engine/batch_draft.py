"""Draft-model speculation for a batch: batched drafting, one verify forward.

Each round the draft model runs K + 1 forwards of shape (B, 1), K the largest k of
the rows: the first feeds every row's pending token, the next ones the row's last
draft, the last only puts d_K in the cache. The draft cache then holds pending +
d1..dK per row, as the target's holds pending + drafts (+ padding) after the
verify, so one rollback (``engine.batch_speculative.rollback``) with the same
rejected counts serves both caches: between rounds each row's draft cache holds
exactly the tokens of its target cache (the history but the pending token). Each
row verifies only its own first k drafts. Runs on the engine worker thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.batch import Step, prefill
from engine.batch_speculative import SpecBatch, SpecRow, _budget, _count, rollback
from engine.kv_cache import BatchKVCache, make_prompt_cache
from engine.sampling import normalize


def prefill_draft(
    draft_model: nn.Module, tokens: list[int], stream: mx.Stream
) -> list[Any]:
    """A new draft cache holding all of ``tokens`` (the prompt), like the target's
    after its prefill; the draft's KV is never taken from the prompt cache."""
    cache = make_prompt_cache(draft_model)
    prefill(draft_model, cache, tokens, stream)
    return cache


class DraftBatch(SpecBatch):
    """A ``SpecBatch`` whose rows draft with ``draft_model`` (see the module doc)."""

    def __init__(
        self, model: nn.Module, draft_model: nn.Module, stream: mx.Stream
    ) -> None:
        super().__init__(model, stream)
        self.draft_model = draft_model
        self.draft_cache: list[Any] | None = None  # one BatchKVCache per draft layer

    def add(
        self,
        rows: list[SpecRow],
        caches: list[list[Any]],
        *,
        draft_caches: list[list[Any]],
    ) -> None:
        """Join ``rows``; ``draft_caches[i]`` holds the tokens ``caches[i]`` holds."""
        if not rows:
            return
        merged = [
            BatchKVCache.merge([c[layer] for c in draft_caches])
            for layer in range(len(draft_caches[0]))
        ]
        if self.draft_cache is None:
            self.draft_cache = merged
        else:
            for mine, theirs in zip(self.draft_cache, merged, strict=True):
                mine.extend(theirs)
        super().add(rows, caches)

    def remove(self, indices: list[int]) -> list[list[Any]]:
        """Drop rows ``indices``; return their target caches (their draft KV is
        dropped: the prompt cache holds target KV only)."""
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        if indices and self.draft_cache is not None:
            with mx.stream(self.stream):
                if keep:
                    for c in self.draft_cache:
                        c.filter(keep)
                else:
                    self.draft_cache = None
        return super().remove(indices)

    def step(self, launched: Callable[[], None] = lambda: None) -> list[Step]:
        """Draft for every row, verify in one forward, accept per row; each row gets
        1 to k + 1 tokens. ``launched``: see ``Batch.step`` (called before the
        drafts are evaluated)."""
        start = time.perf_counter()
        ks = [min(row.k, _budget(row) - 1) for row in self.rows]
        width = 1 + max(ks)
        with mx.stream(self.stream):
            proposed, proposed_q = self._draft(width - 1, launched)
        drafts = [d[:k] for d, k in zip(proposed, ks, strict=True)]
        qs = [
            q[:k] if q is not None and k else None
            for q, k in zip(proposed_q, ks, strict=True)
        ]
        # Rows with fewer drafts are padded; their padding is rejected like a draft.
        inputs = [
            [row.pending, *d, *[row.pending] * (width - 1 - len(d))]
            for row, d in zip(self.rows, drafts, strict=True)
        ]
        middle = time.perf_counter()
        with mx.stream(self.stream):
            logits = self.model(mx.array(inputs), cache=self.cache).astype(mx.float32)
            logprobs = self._logprobs(logits, drafts)
            accepted = self._accept(logprobs, drafts, qs)
            self._rollback([width - 1 - n for n, _ in accepted])
        times = (middle - start, time.perf_counter() - middle)
        out = []
        for row, lp, d, (n, token) in zip(
            self.rows, logprobs, drafts, accepted, strict=True
        ):
            new = [*d[:n], token]
            row.history.extend(new)
            row.pending = token
            _count(row, len(d), n, "model", times)
            out.append([(t, lp[j]) for j, t in enumerate(new)])
        return out

    def _rollback(self, rejected: list[int]) -> None:
        """Drop each row's rejected positions from both caches, alike."""
        rollback([*self.cache, *self.draft_cache], rejected)

    def _draft(
        self, count: int, launched: Callable[[], None]
    ) -> tuple[list[list[int]], list[mx.array | None]]:
        """``count`` drafts per row and, for sampled rows, their distributions q
        (count, vocab); the draft cache ends holding pending + the drafts.

        Unlike the single-sequence path there is no draft_p_min early stop: the
        batch's forwards run for the longest row anyway.
        """
        keys = [row.split_keys(count) if count else None for row in self.rows]
        qs: list[list[mx.array]] = [[] for _ in self.rows]
        columns: list[mx.array] = []  # each (B,): one draft per row
        tokens = mx.array([row.pending for row in self.rows])
        for i in range(count + 1):
            logits = self.draft_model(tokens[:, None], cache=self.draft_cache)
            if i == count:  # this forward only feeds d_K to the cache
                break
            tokens = self._pick(logits[:, -1, :].astype(mx.float32), columns, keys, qs)
            columns.append(tokens)
        drafts = mx.stack(columns, axis=1) if columns else mx.zeros((len(qs), 0))
        q = [mx.concatenate(row_q) if row_q else None for row_q in qs]
        held = [(c.keys, c.values) for c in self.draft_cache]
        launched()
        mx.eval(drafts, [x for x in q if x is not None], held)
        return drafts.astype(mx.int32).tolist(), q  # (B, count)

    def _pick(
        self,
        logits: mx.array,
        columns: list[mx.array],
        keys: list[mx.array | None],
        qs: list[list[mx.array]],
    ) -> mx.array:
        """Each row's next draft (B,) from the draft's logits (B, vocab): argmax, or
        a draw with the row's key from its scaled distribution (kept in ``qs``)."""
        rows = self.rows
        if all(row.scale is None and not row.processors for row in rows):
            return mx.argmax(logits, axis=-1).astype(mx.int32)
        picks = []
        for r, row in enumerate(rows):
            seen = None
            if row.processors:  # they see the history and this round's drafts
                history = mx.array(row.history[row.seen_from :], mx.int32)
                seen = mx.concatenate([history, *(c[r : r + 1] for c in columns)])
            logprobs = normalize(logits[r : r + 1], lambda _, s=seen: s, row.processors)
            if row.scale is None:
                picks.append(mx.argmax(logprobs, axis=-1))
                continue
            scaled = row.scale(logprobs)  # (1, vocab)
            picks.append(mx.random.categorical(scaled, key=keys[r][len(columns)]))
            qs[r].append(mx.softmax(scaled, axis=-1))
        return mx.concatenate(picks).astype(mx.int32)
