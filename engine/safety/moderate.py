"""``moderate``: one text through the safety filter to a verdict under a policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.safety.detect import detect
from engine.safety.findings import CATEGORIES, Finding
from engine.safety.policy import Policy

Judge = Callable[[str, str], list[Finding]]  # (text, role) -> findings


@dataclass(frozen=True)
class Verdict:
    """What the safety filter decided about one text.

    Attributes:
        flagged: Some category reached its threshold and its action is not "allow".
        action: The strongest action called for: "allow", "warn", "redact" or
            "block".
        category_scores: The highest score (0 to 1) per category, every category.
        findings: Everything the layers found, sorted by span, below threshold too.
        triggered: The findings that act under the policy.
        redacted_text: The text with each triggered finding of a "redact" category
            replaced by its placeholder, e.g. ``[PHONE]``.
    """

    flagged: bool = False
    action: str = "allow"
    category_scores: dict[str, float] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    triggered: tuple[Finding, ...] = ()
    redacted_text: str = ""

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories that triggered, in taxonomy order."""
        hit = {f.category for f in self.triggered}
        return tuple(c for c in CATEGORIES if c in hit)

    def reason(self) -> str:
        """One line for people: what triggered, and where."""
        if not self.triggered:
            return "nothing found"
        parts = [
            f"{f.category} ({f.rule}, score {f.score:.2f}, chars {f.start}-{f.end})"
            for f in self.triggered
        ]
        return f"{self.action}: " + "; ".join(parts)


def placeholder(finding: Finding) -> str:
    """The text a redacted span becomes: ``[LABEL]``, or the category upper-cased."""
    return f"[{finding.label or finding.category.upper()}]"


def redact(text: str, findings: Sequence[Finding]) -> str:
    """Replace each span of ``findings`` in ``text`` by its placeholder.

    Overlapping spans merge into one placeholder (the first finding's).
    """
    out, at = [], 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.end <= at:
            continue
        if f.start >= at:
            out += [text[at : f.start], placeholder(f)]
        at = max(at, f.end)
    return "".join(out) + text[at:]


def moderate(
    text: str,
    role: str = "prompt",
    policy: Policy | None = None,
    judge: Judge | None = None,
) -> Verdict:
    """Screen ``text`` with every rule layer (and ``judge``, when given).

    Args:
        text: A prompt or a response, as written.
        role: "prompt" (the user's words) or "response" (the model's).
        policy: Actions and thresholds per category; the default policy if None.
        judge: An optional model judge (see ``engine.safety.judge``), run after
            the rules; its findings join theirs.

    Returns:
        The verdict: flagged, action, scores, findings and the redacted text.

    Raises:
        ValueError: ``role`` is neither "prompt" nor "response".
    """
    policy = policy or Policy()
    findings = detect(text, role)
    if judge is not None:
        findings = sorted([*findings, *judge(text, role)], key=lambda f: f.start)
    return verdict_of(text, findings, policy)


def verdict_of(text: str, findings: list[Finding], policy: Policy) -> Verdict:
    """The verdict ``policy`` gives ``findings`` of ``text``."""
    scores = dict.fromkeys(CATEGORIES, 0.0)
    for f in findings:
        scores[f.category] = max(scores[f.category], f.score)
    triggered = policy.triggered(findings)
    action = policy.action(findings)
    masked = [f for f in triggered if policy.rules[f.category].action == "redact"]
    return Verdict(
        flagged=bool(triggered),
        action=action,
        category_scores=scores,
        findings=tuple(findings),
        triggered=tuple(triggered),
        redacted_text=redact(text, masked),
    )
