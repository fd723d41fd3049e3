"""The stream of chunks a caller reads from the engine worker, cancellable anywhere."""

from __future__ import annotations

import queue
from typing import Any

from engine.schema import Choice, Chunk, Completion, Usage
from engine.worker import EngineDied, EngineWorker, GroupJob, Job

POLL_S = 0.5  # how often a waiting reader checks that the worker is alive


class ChunkStream:
    """An iterator of ``Chunk`` that any thread may cancel.

    ``cancel()`` (or ``close()``) stops the generation within one token; the stream
    then ends with a chunk whose ``finish_reason`` is ``"cancelled"``.
    """

    def __init__(self, job: Job | GroupJob, worker: EngineWorker) -> None:
        self._job, self._worker, self._done = job, worker, False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Any:
        while not self._done:
            try:
                chunk = self._job.out.get(timeout=POLL_S)
            except queue.Empty:
                if not self._worker.is_alive():
                    raise EngineDied(
                        "The engine thread stopped mid-generation."
                    ) from None
                continue
            if chunk is None:
                self._done = True
                break
            return chunk
        raise StopIteration

    def cancel(self) -> None:
        """Stop the generation; safe to call from any thread, more than once."""
        self._job.cancel.set()

    close = cancel


def completion_of(parts: dict[int, list[Chunk]]) -> Completion:
    """Whole completions from each choice's chunks (``Model.generate``).

    Raises:
        RuntimeError: A choice ended in an error.
    """
    choices, stats = [], []
    for index, chunks in parts.items():
        last = chunks[-1]
        if last.finish_reason == "error":
            raise RuntimeError(f"Generation failed: {last.error}")
        choices.append(
            Choice(
                index=index,
                text="".join(c.text for c in chunks),
                tokens=tuple(c.token for c in chunks if c.token is not None),
                finish_reason=last.finish_reason,
                logprobs=tuple(c.logprob for c in chunks if c.logprob is not None),
            )
        )
        stats.append(last.stats)
    usage = Usage(
        prompt_tokens=stats[0].prompt_tokens,
        completion_tokens=sum(s.completion_tokens for s in stats),
        cached_tokens=stats[0].cached_tokens,
    )
    return Completion(tuple(choices), usage, tuple(stats))
