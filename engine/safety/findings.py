"""What every safety detector returns: findings with category, span, score and rule."""

from __future__ import annotations

from dataclasses import dataclass

# The MLCommons hazard taxonomy as used by Llama Guard 3 (S1-S14), then our own three.
HAZARDS = {
    "violent_crimes": "S1",
    "non_violent_crimes": "S2",
    "sex_related_crimes": "S3",
    "child_sexual_exploitation": "S4",
    "defamation": "S5",
    "specialized_advice": "S6",
    "privacy": "S7",
    "intellectual_property": "S8",
    "indiscriminate_weapons": "S9",
    "hate": "S10",
    "suicide_self_harm": "S11",
    "sexual_content": "S12",
    "elections": "S13",
    "code_interpreter_abuse": "S14",
}
CATEGORIES = (*HAZARDS, "pii", "secrets", "prompt_injection")


@dataclass(frozen=True)
class Finding:
    """One thing a detector found in a text.

    ``start``/``end`` are character offsets (end exclusive) into the text as the
    caller passed it, before any normalization; a finding inside a decoded run
    (base64, hex, URL encoding) spans the whole encoded run. ``score`` is in [0, 1].
    ``detector`` names the layer ("pii", "secrets", "lexicon", "injection",
    "judge") and ``rule`` the rule inside it (e.g. "cn_resident_id", "aws_key").
    ``label`` is the redaction placeholder's name, e.g. "PHONE" for ``[PHONE]``.
    """

    category: str
    start: int
    end: int
    score: float
    detector: str
    rule: str
    label: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"Unknown safety category {self.category!r}.")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"Bad span {self.start}:{self.end}.")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Score {self.score} is outside [0, 1].")
