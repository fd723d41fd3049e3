"""The streaming guard: release generated text only after the filter has seen it.

A tail of ``hold_chars`` stays back, and so does any run of ASCII word characters
that reaches into it (a phone number, key or e-mail still being written), so personal
data and secrets are masked before a single character of them is shown. A "block"
verdict stops the stream; what was held is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from engine.safety.detect import detect
from engine.safety.findings import Finding
from engine.safety.moderate import Verdict, redact, verdict_of
from engine.safety.policy import Policy

HOLD_CHARS = 48  # the tail held back while more text may complete a span
CONTEXT_CHARS = 512  # released text rescanned with the new text, for context
MAX_WORD = 1024  # longest run held whole (a JWT or key fits; a minified line need not)
# Characters that can continue a number, key, address or e-mail being written.
_WORDISH = re.compile(r"[A-Za-z0-9_@.+\-/:=%#~]+$")


@dataclass
class StreamGuard:
    """Screens one completion while it streams; ``push`` pieces, then ``close``.

    Attributes:
        policy: Actions and thresholds per category.
        role: "response" for model output (or "prompt").
        hold_chars: Characters held back until more text or the end arrives.
        blocked: True once a "block" verdict has stopped the stream.
        verdict: The latest verdict (over the rescanned window; its spans index
            ``text``).
    """

    policy: Policy = field(default_factory=Policy)
    role: str = "response"
    hold_chars: int = HOLD_CHARS
    blocked: bool = False
    verdict: Verdict = field(default_factory=Verdict)
    text: str = ""  # everything pushed so far
    released: int = 0  # characters of ``text`` already passed on
    _seen: dict = field(default_factory=dict)  # every triggered finding, by span

    def push(self, piece: str) -> str:
        """Add generated text; return the part that is now safe to show ('' if none)."""
        if self.blocked:
            return ""
        self.text += piece
        return self._release(final=False)

    def close(self) -> str:
        """The stream ended: screen and return whatever is still held."""
        return "" if self.blocked else self._release(final=True)

    @property
    def triggered(self) -> list[Finding]:
        """Every finding that acted so far, spans indexing ``text``."""
        return sorted(self._seen.values(), key=lambda f: f.start)

    def _release(self, final: bool) -> str:
        start = max(0, self.released - CONTEXT_CHARS)
        findings = [_moved(f, start) for f in detect(self.text[start:], self.role)]
        self.verdict = verdict_of(self.text, findings, self.policy)
        for f in self.verdict.triggered:
            self._seen[(f.category, f.start, f.end)] = f
        if self.verdict.action == "block":
            self.blocked = True
            return ""
        end = len(self.text) if final else self._boundary(findings)
        if end <= self.released:
            return ""
        masked = [
            _moved(f, -self.released)
            for f in self.verdict.triggered
            if self.policy.rules[f.category].action == "redact"
            and self.released <= f.start
            and f.end <= end
        ]
        piece = redact(self.text[self.released : end], masked)
        self.released = end
        return piece

    def _boundary(self, findings: list[Finding]) -> int:
        """How far text may be released: behind the tail, a growing word, a span."""
        end = len(self.text) - self.hold_chars
        if end <= self.released:
            return self.released
        # A run longer than MAX_WORD (a minified line) is let through in pieces.
        word = _WORDISH.search(self.text, max(self.released, end - MAX_WORD), end)
        if word and _WORDISH.match(self.text, end):
            end = word.start()  # the run goes on into the held tail: hold all of it
        for f in findings:
            if f.start < end < f.end:
                end = f.start
        return max(end, self.released)


def _moved(f: Finding, offset: int) -> Finding:
    return replace(f, start=f.start + offset, end=f.end + offset)
