"""Offline safety filter: normalization, rules, optional model judge, policy, guard.

from engine.safety import moderate
verdict = moderate("Call me at 13800138000", role="prompt")
verdict.action, verdict.redacted_text  # ("redact", "Call me at [PHONE]")
"""

from __future__ import annotations

from engine.safety.findings import CATEGORIES, HAZARDS, Finding
from engine.safety.guard import StreamGuard
from engine.safety.judge import ModelJudge, parse_llama_guard, parse_qwen3guard
from engine.safety.moderate import Verdict, moderate, redact
from engine.safety.policy import ACTIONS, Policy, Rule
from engine.safety.screen import ContentBlocked, GuardedStream, screen_prompt

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "HAZARDS",
    "ContentBlocked",
    "Finding",
    "GuardedStream",
    "ModelJudge",
    "Policy",
    "Rule",
    "StreamGuard",
    "Verdict",
    "moderate",
    "parse_llama_guard",
    "parse_qwen3guard",
    "redact",
    "screen_prompt",
]
