"""Stop strings matched on text across token boundaries, never shown even in part."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StopMatcher:
    """Feed text as it streams; get back what is safe to show.

    Text that could be the start of a stop string is held back until the next piece
    shows whether it is one. When a stop string completes, everything before it is
    released and the rest is dropped.

    Note: ``push`` and ``flush`` update ``held`` in place.
    """

    stops: tuple[str, ...]
    held: str = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return ``(safe_text, stopped)``."""
        buffer = self.held + text
        first = min(
            (i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1
        )
        if first >= 0:
            self.held = ""
            return buffer[:first], True
        keep = self._longest_partial(buffer)
        self.held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Release held text at the end of a stream (no stop string completed)."""
        text, self.held = self.held, ""
        return text

    def _longest_partial(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that starts some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best
