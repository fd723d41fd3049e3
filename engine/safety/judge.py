"""The optional model judge: a guard model the user has, run by our own engine.

Llama Guard 3 answers ``safe`` or ``unsafe`` and a line of hazard codes
(``S1,S10``); Qwen3Guard answers ``Safety: Unsafe`` and ``Categories: Violent``.
Both ship a chat template that builds their instructions from the conversation, so
the judge sends the text as a conversation and parses the answer into findings that
span the whole text. Convert a guard model with ``silica convert`` and load it on an
``Engine(safety=None)``: the judge must read what the filter would block.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.safety.findings import HAZARDS, Finding

CODES = {code: category for category, code in HAZARDS.items()}
# Qwen3Guard's category names -> ours.
QWEN3GUARD = {
    "violent": "violent_crimes",
    "non-violent illegal acts": "non_violent_crimes",
    "sexual content or sexual acts": "sexual_content",
    "pii": "pii",
    "suicide & self-harm": "suicide_self_harm",
    "unethical acts": "non_violent_crimes",
    "politically sensitive topics": "elections",
    "copyright violation": "intellectual_property",
    "jailbreak": "prompt_injection",
}


def parse_llama_guard(answer: str) -> list[str]:
    """Categories from a Llama Guard answer ("unsafe\\nS1,S10"); [] when safe."""
    lines = answer.strip().splitlines()
    if not lines or lines[0].strip().lower() != "unsafe":
        return []
    codes = re.findall(r"S\d{1,2}", " ".join(lines[1:]))
    return [CODES[c] for c in dict.fromkeys(codes) if c in CODES] or ["violent_crimes"]


def parse_qwen3guard(answer: str) -> list[str]:
    """Categories from a Qwen3Guard answer ("Safety: Unsafe\\nCategories: ...")."""
    safety = re.search(r"Safety:\s*(\w+)", answer)
    if not safety or safety.group(1).lower() == "safe":
        return []
    found = re.search(r"Categories:\s*(.+)", answer)
    names = [n.strip().lower() for n in (found.group(1) if found else "").split(",")]
    return [QWEN3GUARD[n] for n in names if n in QWEN3GUARD]


@dataclass
class ModelJudge:
    """A guard model as the filter's third layer; call it as ``judge(text, role)``.

    Attributes:
        model: A loaded ``engine.Model`` (on an ``Engine(safety=None)``).
        parse: Turns the model's answer into categories (``parse_llama_guard`` or
            ``parse_qwen3guard``).
        max_tokens: The longest answer read.
        score: The score a category the model names gets (0 to 1).
    """

    model: Any
    parse: Callable[[str], list[str]] = parse_llama_guard
    max_tokens: int = 24
    score: float = 0.9

    def __call__(self, text: str, role: str = "prompt") -> list[Finding]:
        if self.model.engine.safety is not None:
            raise ValueError("Load the guard model on an Engine(safety=None).")
        messages = [{"role": "user", "content": text}]
        if role == "response":
            messages = [{"role": "user", "content": ""}, *messages]
            messages[-1] = {"role": "assistant", "content": text}
        answer = self.model.generate(
            messages, max_tokens=self.max_tokens, temperature=0.0
        ).text
        return [
            Finding(category, 0, len(text), self.score, "judge", f"judge:{category}")
            for category in self.parse(answer)
        ]
