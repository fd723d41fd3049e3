"""Several generations as one engine task, streamed side by side (``Engine.compare``).

Each side is screened and guarded by the engine's safety policy like ``Model.stream``;
a side whose answer is blocked is muted and ends with ``"content_filter"`` while the
others go on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.runtime import ChunkStream, Engine, Model, Prompt
from engine.safety.moderate import Verdict
from engine.safety.policy import ACTIONS
from engine.safety.screen import GuardedStream, screen_prompt
from engine.schema import MAX_N, Chunk, SamplingParams


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a model, its prompt and how to sample.

    Attributes:
        model: A model loaded on the engine that runs the comparison.
        prompt: Raw text, chat messages or token ids (as ``Model.stream`` takes).
        params: Sampling parameters.
        draft: A draft model for speculative decoding (same engine and tokenizer).
        speculation: ``"lookup"``, ``"draft"``, ``"auto"`` or None (see ``stream``).
    """

    model: Model
    prompt: Prompt
    params: SamplingParams
    draft: Model | None = None
    speculation: str | None = None


class CompareStream:
    """An iterator of ``(side, Chunk)``; ``cancel()`` stops every side.

    ``prompt_verdicts`` holds each side's prompt verdict (None with safety off).
    """

    def __init__(
        self,
        pairs: Iterator[tuple[int, Chunk]],
        inner: Any,
        prompt_verdicts: tuple[Verdict | None, ...],
    ) -> None:
        self._pairs, self._inner = pairs, inner
        self.prompt_verdicts = prompt_verdicts

    def __iter__(self) -> CompareStream:
        return self

    def __next__(self) -> tuple[int, Chunk]:
        return next(self._pairs)

    def cancel(self) -> None:
        """Stop every side within one token; safe from any thread."""
        self._inner.cancel()

    close = cancel


def stream_side_by_side(
    engine: Engine, sides: Sequence[Side], *, interleave: bool = True
) -> CompareStream:
    """Screen, tokenize and queue ``sides`` as one task (see ``Engine.compare``).

    Raises:
        ValueError: No sides, a model of another engine, bad parameters, a prompt
            too long; ``ContentBlocked`` (a ValueError) when the policy blocks one.
        InsufficientMemory: The sides' KV caches would not fit the memory budget.
        EngineBusy: Too many requests are queued.
    """
    if not sides:
        raise ValueError("compare needs at least one side.")
    if any(side.model.engine is not engine for side in sides):
        raise ValueError("Load every compared model on the engine that compares.")
    policy = engine.safety
    requests, verdicts = [], []
    for side in sides:
        prompt, verdict = side.prompt, None
        if policy is not None:
            decode = side.model._tokenizer.decode  # token-id prompts are read as text
            prompt, verdict = screen_prompt(prompt, policy, decode)
        verdicts.append(verdict)
        requests.append(
            side.model.prepare(
                prompt, side.params, draft=side.draft, speculation=side.speculation
            )
        )
    if interleave:  # side by side, every side's KV cache is held at once
        engine.check_memory(requests)
    job = engine.worker.generate_together(requests, interleave=interleave)
    pairs = ChunkStream(job, engine.worker)
    if policy is None:
        return CompareStream(pairs, pairs, tuple(verdicts))
    # One guard per side and completion: the guarded stream keys them by index.
    completions = sum(side.params.n for side in sides)
    guarded = GuardedStream(
        _KeyedChunks(pairs), policy, _strongest(verdicts), completions
    )
    guarded_pairs = ((c.index // MAX_N, _unkeyed(c)) for c in guarded)
    return CompareStream(guarded_pairs, pairs, tuple(verdicts))


class _KeyedChunks:
    """``(side, chunk)`` -> chunk whose index also says the side; cancel passes on."""

    def __init__(self, pairs: ChunkStream) -> None:
        self._pairs = pairs

    def __iter__(self) -> _KeyedChunks:
        return self

    def __next__(self) -> Chunk:
        side, chunk = next(self._pairs)
        return replace(chunk, index=side * MAX_N + chunk.index)

    def cancel(self) -> None:
        self._pairs.cancel()


def _unkeyed(chunk: Chunk) -> Chunk:
    return replace(chunk, index=chunk.index % MAX_N)


def _strongest(verdicts: list[Verdict | None]) -> Verdict:
    known = [v for v in verdicts if v is not None]
    return max(known, key=lambda v: ACTIONS.index(v.action), default=Verdict())
