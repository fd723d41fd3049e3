"""The Safety tab's audit log: the recent flags of this UI's traffic, in memory.

The Chat and Compare tabs and the Safety tab's checker record every verdict that
flags something; the excerpt masks each triggered span, so the log itself holds no
personal data or secrets. No Gradio here.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import pandas as pd

from engine import Verdict, redact

MAX_FLAGS = 200
EXCERPT_CHARS = 120
COLUMNS = ["time", "source", "role", "action", "categories", "rules", "excerpt"]


@dataclass(frozen=True)
class Flag:
    """One flagged text: where it came from and what the filter decided."""

    at: float
    source: str
    role: str
    action: str
    categories: tuple[str, ...]
    rules: tuple[str, ...]
    excerpt: str


class FlagLog:
    """The last ``MAX_FLAGS`` flags, newest first; safe to use from any thread."""

    def __init__(self, size: int = MAX_FLAGS) -> None:
        self._flags: deque[Flag] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(
        self,
        source: str,
        role: str,
        text: str,
        verdict: Verdict | None,
        *,
        mask: bool = True,
    ) -> Flag | None:
        """Keep ``verdict`` if it flagged ``text``; return the entry (None if not).

        Args:
            source: "chat", "compare" or "check".
            role: "prompt" or "response".
            text: The text judged (``mask``) or the text as shown (already screened).
            verdict: The filter's verdict.
            mask: Mask the triggered spans of ``text`` (they index it).
        """
        if verdict is None or not verdict.flagged:
            return None
        masked = redact(text, verdict.triggered) if mask else text
        masked = masked.replace("\n", " ")
        excerpt = masked[:EXCERPT_CHARS] + ("…" if len(masked) > EXCERPT_CHARS else "")
        flag = Flag(
            at=time.time(),
            source=source,
            role=role,
            action=verdict.action,
            categories=verdict.categories,
            rules=tuple(dict.fromkeys(f.rule for f in verdict.triggered)),
            excerpt=excerpt,
        )
        with self._lock:
            self._flags.appendleft(flag)
        return flag

    def flags(self) -> list[Flag]:
        with self._lock:
            return list(self._flags)

    def table(self) -> pd.DataFrame:
        """The log as rows for a dataframe, newest first."""
        rows = [
            [
                time.strftime("%H:%M:%S", time.localtime(f.at)),
                f.source,
                f.role,
                f.action,
                ", ".join(f.categories),
                ", ".join(f.rules),
                f.excerpt,
            ]
            for f in self.flags()
        ]
        return pd.DataFrame(rows, columns=COLUMNS)
