"""Hazard lexicons in English and Chinese, scored by the words around each match.

Terms and cues live in ``data/lexicon_*.toml`` and are matched on the normalized
text (``normalize.normalize``): English with ASCII word boundaries, Chinese
anywhere (no segmentation), and every all-Chinese term also in toneless pinyin.
A term scores its weight; cues within ``WINDOWS`` characters change that score:

- ``boost`` cues add their value: a request ("how do I", "教我"), a target
  ("my husband", "学校"), a protected group for hate, minors plus sex for child
  exploitation, the model going along in a response ("Sure, here's how").
- ``damp`` cues multiply by their value: history, fiction, programming, sport,
  cooking, defensive questions, a refusal in a response. An ask for operational
  detail ("step by step", "具体步骤") cancels dampening.
- ``help`` caps self-harm at a low score and marks the finding "help_seeking", so
  "I feel suicidal, where can I get help?" is not blocked but can be answered
  with resources.
- ``safe`` phrases ("kill -9", "killer serve", "杀毒", "炸鸡") drop the term match
  they overlap.

All terms and cues are scanned in one pass by a ``pattern_set.PatternSet``.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pypinyin import lazy_pinyin

from engine.safety.findings import CATEGORIES, Finding
from engine.safety.normalize import Normalized
from engine.safety.pattern_set import PatternSet, compile_patterns

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DATA = Path(__file__).parent / "data"
LEXICON_FILES = {"en": DATA / "lexicon_en.toml", "zh": DATA / "lexicon_zh.toml"}
ROLES = ("prompt", "response")
EFFECTS = ("safe", "help", "boost", "damp")
# Characters of normalized text either side of a term in which cues count; Chinese
# packs about three times as much meaning per character.
WINDOWS = {"en": 80, "zh": 30}
DETECTOR = "lexicon"


@dataclass(frozen=True)
class Term:
    """One lexicon entry; ``pinyin_of`` is the Chinese term a pinyin form spells."""

    category: str
    weight: float
    lang: str
    pinyin_of: str = ""


@dataclass(frozen=True)
class Cue:
    """Patterns that change the score of terms near them (see the module doc)."""

    name: str
    effect: str
    value: float
    categories: frozenset[str]  # empty: every category
    roles: frozenset[str]
    undamp: bool

    def applies(self, category: str) -> bool:
        return not self.categories or category in self.categories


@dataclass(frozen=True)
class Lexicon:
    """Terms and cues in one ``PatternSet``, so a text is scanned once: pattern id
    ``i`` is ``terms[i]`` if ``i < len(terms)``, else ``cues[cue_of[i - len(terms)]]``.
    """

    terms: tuple[Term, ...]
    cues: tuple[Cue, ...]
    cue_of: tuple[int, ...]
    patterns: PatternSet


def _pinyin_forms(pattern: str, skip: set[str]) -> list[tuple[str, str]]:
    """(regex, Chinese word) for each all-Chinese alternative of ``pattern``."""
    forms = []
    for word in pattern.split("|"):
        if (
            len(word) < 2
            or word in skip
            or not all("\u3400" <= c <= "\u9fff" for c in word)
        ):
            continue
        # Normalization strips the umlaut, so ü is typed and read as u or v.
        syllables = [s.replace("v", "[uv]") for s in lazy_pinyin(word)]
        forms.append(("[ '-]?".join(syllables), word))
    return forms


def _read_terms(data: dict, lang: str, where: str) -> list[tuple[str, Term]]:
    skip = set(data.get("pinyin_skip", []))
    terms = []
    for category, table in data.get("terms", {}).items():
        if category not in CATEGORIES:
            raise ValueError(f"{where}: unknown category {category!r}.")
        for pattern, weight in table.items():
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"{where}: weight {weight} of {pattern!r}.")
            terms.append((pattern, Term(category, weight, lang)))
            if lang == "zh" and weight >= 0.3:
                for form, word in _pinyin_forms(pattern, skip):
                    terms.append((form, Term(category, weight, lang, pinyin_of=word)))
    return terms


def _read_cues(data: dict, where: str) -> list[tuple[Cue, list[str]]]:
    cues = []
    for entry in data.get("cues", []):
        name, effect = entry.get("name"), entry.get("effect")
        if effect not in EFFECTS:
            raise ValueError(f"{where}: cue {name!r} has effect {effect!r}.")
        unknown = set(entry.get("categories", [])) - set(CATEGORIES)
        unknown |= set(entry.get("roles", ROLES)) - set(ROLES)
        if unknown:
            raise ValueError(f"{where}: cue {name!r} names unknown {sorted(unknown)}.")
        cue = Cue(
            name=name,
            effect=effect,
            value=float(entry.get("value", 0.0)),
            categories=frozenset(entry.get("categories", [])),
            roles=frozenset(entry.get("roles", ROLES)),
            undamp=bool(entry.get("undamp", False)),
        )
        cues.append((cue, list(entry["patterns"])))
    return cues


def load_lexicon(files: dict[str, Path] | None = None) -> Lexicon:
    """Read and compile lexicon files.

    Args:
        files: Language code ("en" or "zh", which sets the cue window) to TOML
            file; default ``LEXICON_FILES``.

    Returns:
        The compiled lexicon.

    Raises:
        ValueError: A file is unreadable, or names an unknown category, effect or
            role, or has a bad pattern or weight, or one cue name means two things.
    """
    terms: list[tuple[str, Term]] = []
    cues: dict[str, Cue] = {}
    cue_patterns: list[tuple[str, str]] = []
    for lang, path in (files or LEXICON_FILES).items():
        if lang not in WINDOWS:
            raise ValueError(f"Unknown lexicon language {lang!r}; use en or zh.")
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"Cannot read lexicon {path}: {e}") from e
        terms += _read_terms(data, lang, str(path))
        for cue, patterns in _read_cues(data, str(path)):
            if cues.setdefault(cue.name, cue) != cue:
                raise ValueError(f"{path}: cue {cue.name!r} differs from its twin.")
            cue_patterns += [(p, cue.name) for p in patterns]
    names = list(cues)
    return Lexicon(
        terms=tuple(t for _, t in terms),
        cues=tuple(cues.values()),
        cue_of=tuple(names.index(n) for _, n in cue_patterns),
        patterns=compile_patterns([p for p, _ in terms + cue_patterns]),
    )


@cache
def default_lexicon() -> Lexicon:
    """The lexicon from ``LEXICON_FILES``, compiled once per process."""
    return load_lexicon()


def _score(
    term: Term, span: tuple[int, int], hits: list, longest: int
) -> tuple[float, list[str]]:
    """The term's score from the cues in its window and the damp/help cues used.

    ``hits`` holds (start, end, cue) sorted by start; none is over ``longest``.
    """
    window = WINDOWS[term.lang]
    lo, hi = span[0] - window, span[1] + window
    first = bisect_left(hits, (lo - longest,))
    near = {}
    for start, end, cue in hits[first:]:
        if start >= hi:
            break
        if end > lo and cue.applies(term.category):
            near[cue.name] = cue
    score = term.weight + sum(c.value for c in near.values() if c.effect == "boost")
    if any(c.undamp for c in near.values()):
        return min(score, 1.0), []
    used = []
    for cue in near.values():
        if cue.effect == "damp":
            score *= cue.value
            used.append(cue.name)
        elif cue.effect == "help":
            score = min(score, cue.value)
            used.append(cue.name)
    return min(score, 1.0), used


def find_lexicon(
    normalized: Normalized, *, role: str = "prompt", lexicon: Lexicon | None = None
) -> list[Finding]:
    """Score every lexicon term in a normalized text.

    Args:
        normalized: ``normalize(text)``; findings span the original ``text``.
        role: "prompt" or "response"; some cues (refusals, "Sure, here's how")
            count only in responses.
        lexicon: Default ``default_lexicon()``.

    Returns:
        One finding per term match not covered by a safe phrase, detector
        "lexicon", rule "<category>:<matched text>" plus "~<cue>" for each
        dampening or help-seeking cue applied (e.g. "violent_crimes:kill~fiction").

    Raises:
        ValueError: ``role`` is neither "prompt" nor "response".
    """
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    lexicon = lexicon or default_lexicon()
    n_terms = len(lexicon.terms)
    found = lexicon.patterns.matches(normalized.text)
    matches = _longest([m for m in found if m[2] < n_terms])
    if not matches:
        return []
    hits = [
        (start, end, cue)
        for start, end, pid in found
        if pid >= n_terms
        and role in (cue := lexicon.cues[lexicon.cue_of[pid - n_terms]]).roles
    ]
    safe = [(s, e) for s, e, cue in hits if cue.effect == "safe"]
    longest = max((e - s for s, e, _ in hits), default=0)
    findings = []
    for start, end, pid in matches:
        if any(s < end and e > start for s, e in safe):
            continue
        term = lexicon.terms[pid]
        score, used = _score(term, (start, end), hits, longest)
        label = normalized.text[start:end]
        label = f"{label}({term.pinyin_of})" if term.pinyin_of else label
        rule = f"{term.category}:{label}" + "".join(f"~{n}" for n in used)
        span = normalized.span(start, end)
        findings.append(Finding(term.category, *span, round(score, 3), DETECTOR, rule))
    return findings


def _longest(matches: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Drop matches inside a longer one: "pipe bomb" hides "bomb", 儿童色情 色情.

    Matches with the same span (one phrase in two categories) are all kept.
    """
    kept: list[tuple[int, int, int]] = []
    reach_end, reach_start = -1, -1  # the kept match reaching furthest right
    for start, end, pid in sorted(matches, key=lambda m: (m[0], m[0] - m[1])):
        # Every kept match starts at or before ``start``, so reaching past ``end``
        # means containing this one.
        if reach_end > end or (reach_end == end and reach_start < start):
            continue
        kept.append((start, end, pid))
        if end > reach_end:
            reach_end, reach_start = end, start
    return kept
