"""Safety policy: per category an action (allow, warn, redact, block) and a threshold.

A policy file is TOML; categories it leaves out keep the default rule::

    [categories.pii]
    action = "redact"
    threshold = 0.5

    [categories.hate]
    action = "warn"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.safety.findings import CATEGORIES, Finding

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ACTIONS = ("allow", "warn", "redact", "block")  # in increasing strength
DEFAULT_THRESHOLD = 0.5
# Advice, opinions about people, elections and copyright are mostly legitimate topics:
# flag them, don't refuse. Personal data and secrets are masked, not refused.
_WARN = {"specialized_advice", "defamation", "intellectual_property", "elections"}
_REDACT = {"pii", "secrets"}


@dataclass(frozen=True)
class Rule:
    """What to do with a category whose score reaches ``threshold`` (in [0, 1])."""

    action: str = "block"
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(
                f"Unknown action {self.action!r}; use one of {', '.join(ACTIONS)}."
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Threshold {self.threshold} is outside [0, 1].")


def _default_rules() -> dict[str, Rule]:
    rules = {}
    for category in CATEGORIES:
        if category in _REDACT:
            rules[category] = Rule("redact")
        elif category in _WARN:
            rules[category] = Rule("warn")
        else:
            rules[category] = Rule("block")
    return rules


@dataclass(frozen=True)
class Policy:
    """One rule per category; ``Policy()`` is the default policy."""

    rules: dict[str, Rule] = field(default_factory=_default_rules)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Load a TOML policy; raise ValueError naming the file and the problem."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"Cannot read safety policy {path}: {e}") from e
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "policy") -> Policy:
        rules = _default_rules()
        table = data.get("categories", {})
        unknown = set(data) - {"categories"} | set(table) - set(CATEGORIES)
        if unknown:
            raise ValueError(
                f"{source}: unknown keys {sorted(unknown)}; categories are "
                f"{', '.join(CATEGORIES)}."
            )
        for category, entry in table.items():
            if not isinstance(entry, dict) or set(entry) - {"action", "threshold"}:
                raise ValueError(
                    f"{source}: [categories.{category}] takes only action, threshold."
                )
            base = rules[category]
            try:
                rules[category] = Rule(
                    str(entry.get("action", base.action)),
                    float(entry.get("threshold", base.threshold)),
                )
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: [categories.{category}]: {e}") from e
        return cls(rules)

    def triggered(self, findings: list[Finding]) -> list[Finding]:
        """The findings at or above their category's threshold, not allowed."""
        return [
            f
            for f in findings
            if f.score >= self.rules[f.category].threshold
            and self.rules[f.category].action != "allow"
        ]

    def action(self, findings: list[Finding]) -> str:
        """The strongest action the triggered findings call for ("allow" if none)."""
        actions = [self.rules[f.category].action for f in self.triggered(findings)]
        return max(actions, key=ACTIONS.index, default="allow")
