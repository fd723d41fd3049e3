"""Safety at the engine's edge: screen the prompt, guard the stream of chunks."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from engine.safety.guard import StreamGuard
from engine.safety.moderate import Verdict, moderate
from engine.safety.policy import ACTIONS, Policy
from engine.schema import Chunk


class ContentBlocked(ValueError):
    """The safety policy blocks this prompt; ``verdict`` says why."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"The safety filter blocked the prompt ({verdict.reason()}).")
        self.verdict = verdict


def screen_prompt(
    prompt: str | Sequence[Any],
    policy: Policy,
    decode: Callable[[list[int]], str] | None = None,
) -> tuple[str | list[Any], Verdict]:
    """Screen a prompt before generation; return it (redacted) and the verdict.

    Args:
        prompt: Raw text, chat messages or token ids (screened as ``decode(ids)``;
            they are blocked or passed, never redacted).
        policy: Actions and thresholds per category.
        decode: Token ids to text, for token-id prompts.

    Raises:
        ContentBlocked: The policy blocks the prompt.
    """
    if isinstance(prompt, str):
        verdict = moderate(prompt, "prompt", policy)
        screened: Any = verdict.redacted_text
    elif prompt and all(isinstance(m, dict) for m in prompt):
        verdicts, screened = [], []
        for message in prompt:
            content = message.get("content")
            if not isinstance(content, str):
                screened.append(message)
                continue
            role = "response" if message.get("role") == "assistant" else "prompt"
            verdicts.append(moderate(content, role, policy))
            screened.append({**message, "content": verdicts[-1].redacted_text})
        verdict = max(verdicts, key=lambda v: ACTIONS.index(v.action), default=None)
        verdict = verdict or Verdict()
    else:
        verdict = moderate(decode(list(prompt)) if decode else "", "prompt", policy)
        screened = list(prompt)
    if verdict.action == "block":
        raise ContentBlocked(verdict)
    return screened, verdict


class GuardedStream:
    """Chunks of a stream, their text released only after the guard has seen it.

    A completion whose answer the policy blocks ends with ``finish_reason``
    ``"content_filter"``; with one completion the generation is cancelled at once.
    Every last chunk carries its completion's verdict as ``chunk.safety``.
    """

    def __init__(
        self, inner: Any, policy: Policy, prompt_verdict: Verdict, completions: int
    ) -> None:
        self._inner, self._policy, self._n = inner, policy, completions
        self.prompt_verdict = prompt_verdict
        self._guards: dict[int, StreamGuard] = {}
        self._pending: deque[Chunk] = deque()

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        while not self._pending:
            self._pending.extend(self._screen(next(self._inner)))
        return self._pending.popleft()

    def cancel(self) -> None:
        """Stop the generation (see ``ChunkStream.cancel``)."""
        self._inner.cancel()

    close = cancel

    def _screen(self, chunk: Chunk) -> list[Chunk]:
        guard = self._guards.setdefault(chunk.index, StreamGuard(self._policy))
        was_blocked = guard.blocked
        text = guard.push(chunk.text)
        if chunk.finish_reason is None:
            if guard.blocked and not was_blocked and self._n == 1:
                self._inner.cancel()  # n > 1: the others go on; this one is muted
            return [replace(chunk, text=text)] if text or not guard.blocked else []
        if chunk.finish_reason != "error":
            text += guard.close()
        finish = "content_filter" if guard.blocked else chunk.finish_reason
        verdict = replace(guard.verdict, triggered=tuple(guard.triggered))
        return [replace(chunk, text=text, finish_reason=finish, safety=verdict)]
