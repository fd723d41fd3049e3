"""The Safety tab's logic: the active policy, checking a text, the audit log.

The engine's safety filter decides (``moderate``); this module only lays its
verdicts out for the tab. No Gradio here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from engine import CATEGORIES, HAZARDS, Finding, Policy, Verdict, moderate
from webui.audit import FlagLog

ROLES = ("prompt", "response")
FINDING_COLUMNS = ["category", "score", "triggered", "detector", "rule", "span", "text"]
POLICY_COLUMNS = ["category", "code", "action", "threshold"]
MAX_CHECK_CHARS = 100_000
Highlights = list[tuple[str, str | None]]  # (piece of text, category or None)


@dataclass(frozen=True)
class SafetyView:
    """What the checker shows: highlighted text, the verdict, every finding."""

    highlights: Highlights
    verdict: str
    findings: pd.DataFrame
    warning: str | None = None


def policy_summary(policy: Policy | None) -> str:
    """One line on whether generations are screened, and how."""
    if policy is None:
        return (
            "The safety filter is **off** for generations; the checker below uses "
            "the built-in policy."
        )
    return (
        "Prompts and answers are screened with the policy below; answers stream "
        "only after they are screened."
    )


def policy_table(policy: Policy | None) -> pd.DataFrame:
    """One row per category: its hazard code, action and threshold."""
    rules = (policy or Policy()).rules
    rows = [
        [c, HAZARDS.get(c, "—"), rules[c].action, rules[c].threshold]
        for c in CATEGORIES
    ]
    return pd.DataFrame(rows, columns=POLICY_COLUMNS)


def highlights(text: str, findings: tuple[Finding, ...]) -> Highlights:
    """``text`` cut into plain pieces and pieces labelled with a finding's category.

    Where findings overlap, the one that starts first (the longer, on a tie) wins.
    """
    out: Highlights = []
    at = 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.start < at or f.end <= f.start:
            continue
        if f.start > at:
            out.append((text[at : f.start], None))
        out.append((text[f.start : f.end], f.category))
        at = f.end
    if at < len(text):
        out.append((text[at:], None))
    return out


def findings_table(text: str, verdict: Verdict) -> pd.DataFrame:
    triggered = set(verdict.triggered)
    rows = [
        [f.category, round(f.score, 3), f in triggered, f.detector, f.rule,
         f"{f.start}-{f.end}", text[f.start : f.end]]
        for f in verdict.findings
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def describe_verdict(text: str, verdict: Verdict) -> str:
    """Markdown: the action, why, and the redacted text when it differs."""
    if not verdict.findings:
        return "✅ **allow**: nothing found."
    if not verdict.triggered:
        count = len(verdict.findings)
        return f"✅ **allow**: {count} finding(s), all below their thresholds."
    icon = {"allow": "✅", "warn": "⚠️", "redact": "✂️", "block": "⛔"}[verdict.action]
    lines = [f"{icon} {verdict.reason()}"]
    if verdict.redacted_text != text:
        lines.append(f"\n**Redacted:** {verdict.redacted_text}")
    return "\n".join(lines)


def check(policy: Policy | None, log: FlagLog, text: str, role: str) -> SafetyView:
    """Run the filter on ``text`` as a prompt or a response; log it if flagged."""
    empty = pd.DataFrame(columns=FINDING_COLUMNS)
    if not text or not text.strip():
        return SafetyView([], "", empty, warning="Type or paste a text to check.")
    if len(text) > MAX_CHECK_CHARS:
        return SafetyView(
            [], "", empty, warning=f"Check at most {MAX_CHECK_CHARS:,} characters."
        )
    verdict = moderate(text, role if role in ROLES else "prompt", policy or Policy())
    log.record("check", role, text, verdict)
    return SafetyView(
        highlights(text, verdict.findings),
        describe_verdict(text, verdict),
        findings_table(text, verdict),
    )
