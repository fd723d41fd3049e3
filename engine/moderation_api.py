"""``POST /v1/moderations`` bodies: OpenAI's shape in and out, our findings as extras.

OpenAI's moderation categories are coarser than the MLCommons taxonomy the filter
uses; each maps from the categories that mean the same thing, and the full verdict
(all our categories, findings with spans and rules, the redacted text) rides along
under ``silica``.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from engine.openai_schema import ApiError
from engine.safety.moderate import Verdict, moderate
from engine.safety.policy import Policy

MODEL_NAME = "silica-safety-rules"
MAX_INPUTS = 32
# OpenAI category -> the categories of ours it is the maximum of.
OPENAI_CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("hate",),
    "harassment/threatening": (),
    "hate": ("hate",),
    "hate/threatening": (),
    "illicit": (
        "non_violent_crimes",
        "sex_related_crimes",
        "indiscriminate_weapons",
        "code_interpreter_abuse",
    ),
    "illicit/violent": ("violent_crimes", "indiscriminate_weapons"),
    "self-harm": ("suicide_self_harm",),
    "self-harm/intent": ("suicide_self_harm",),
    "self-harm/instructions": (),
    "sexual": ("sexual_content", "child_sexual_exploitation"),
    "sexual/minors": ("child_sexual_exploitation",),
    "violence": ("violent_crimes",),
    "violence/graphic": (),
}


def parse_moderation(body: dict[str, Any]) -> list[str]:
    """The texts to screen: ``input`` as a string or a list of 1-32 strings.

    Raises:
        ApiError: 400 naming the problem.
    """
    text = body.get("input")
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        message = "input must be a string or a list of strings."
        raise ApiError(400, message, param="input")
    if not 1 <= len(texts) <= MAX_INPUTS:
        raise ApiError(400, f"input takes 1 to {MAX_INPUTS} strings.", param="input")
    model = body.get("model", MODEL_NAME)
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string.", param="model")
    return texts


def moderation_json(texts: list[str], policy: Policy) -> dict[str, Any]:
    """The response body for ``texts`` screened (as prompts) under ``policy``."""
    results = [_result(moderate(text, "prompt", policy), policy) for text in texts]
    return {"id": f"modr-{uuid.uuid4().hex}", "model": MODEL_NAME, "results": results}


def _result(verdict: Verdict, policy: Policy) -> dict[str, Any]:
    ours = verdict.category_scores
    hit = set(verdict.categories)
    scores = {
        name: max((ours[c] for c in sources), default=0.0)
        for name, sources in OPENAI_CATEGORIES.items()
    }
    flags = {
        name: any(c in hit for c in sources)
        for name, sources in OPENAI_CATEGORIES.items()
    }
    return {
        "flagged": verdict.flagged,
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in flags},
        "silica": {
            "action": verdict.action,
            "categories": {c: c in hit for c in ours},
            "category_scores": ours,
            "findings": [asdict(f) for f in verdict.findings],
            "redacted_text": verdict.redacted_text,
            "thresholds": {c: r.threshold for c, r in policy.rules.items()},
        },
    }
