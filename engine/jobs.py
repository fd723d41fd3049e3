"""What the scheduler keeps of a job: its ticket, its completions in flight."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.schema import Chunk
from engine.sequence import Sequence


@dataclass
class Ticket:
    """A job: sides still to start, where chunks go, and how many are running."""

    sides: deque  # of (side, GenerateRequest)
    put: Callable[[int, Chunk], None]  # (side, chunk)
    done: Callable[[], None]  # called once, when every side has ended
    cancel: threading.Event
    interleave: bool = True
    running: int = 0
    started: Callable[[], None] = lambda: None  # called when it leaves the queue


@dataclass
class Running:
    """A completion in flight in a batch."""

    ticket: Ticket
    side: int
    model: str
    tokens: list[int]  # the prompt
    sequence: Sequence
    output: list[int] = field(default_factory=list)  # every token stepped out

    def emit(self, chunk: Chunk) -> None:
        self.ticket.put(self.side, chunk)


@dataclass
class Solo:
    """A completion (all ``n`` of a request) stepped through ``engine.decode``."""

    ticket: Ticket
    side: int
    chunks: Iterator[Chunk]
    completions: int


def error_chunk(e: Exception, index: int = 0) -> Chunk:
    """The last chunk of a completion that failed with ``e``."""
    return Chunk(
        "", index=index, finish_reason="error", error=f"{type(e).__name__}: {e}"
    )
