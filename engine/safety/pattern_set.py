"""Many regexes matched in one pass, indexed by the literal characters they start with.

Python's ``re`` tries every branch of a large alternation at every position, and
named groups or look-behinds turn off its fast paths: 500 lexicon terms as one
alternation cost 60+ ms per 1,000 characters. A ``PatternSet`` instead finds the
places where some pattern's head occurs (one C-speed regex, a trie of the heads),
looks the head up in a dict, and runs only the patterns of that bucket, after one
"gate" regex (their alternation) has said that one of them matches there.

So every pattern must start with a literal head: two or three characters if the
first is ASCII (one if it is a digit followed by ``+``), else one character; a
character may be a small class (``[ae]``, ``\\d``). Leading groups are expanded
first: ``(?:crystal )?meth`` becomes ``crystal meth`` and ``meth``. ASCII letters
and digits match at word starts only and, when a pattern ends in one, at word ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product

_META = set(".^$*+?{}[]|()\\")
_ESCAPES = {"d": "0123456789"}
MAX_CLASS = 24  # larger character classes cannot be a head
_ASCII = "".join(map(chr, range(32, 127)))
_DIGITS = frozenset("0123456789")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
# A pattern ending in one of these (a letter, or a group or repeat that may end in one)
# gets a look-ahead word boundary.
_WORD_END = _ALNUM | set(")?*+]}")


def _structure(pattern: str):
    """Yield (index, char, depth) for characters outside classes and escapes."""
    depth, i, in_class = 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c in "()":
            depth += 1 if c == "(" else -1
            yield i, c, depth
        else:
            yield i, c, depth
        i += 1


def split_top(pattern: str) -> list[str]:
    """Split ``pattern`` at top-level ``|`` (outside groups, classes, escapes)."""
    cuts = [i for i, c, depth in _structure(pattern) if c == "|" and depth == 0]
    bounds = [-1, *cuts, len(pattern)]
    return [pattern[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def expand(pattern: str) -> list[str]:
    """Alternatives of ``pattern`` that do not start with a group or ``|``."""
    if len(split_top(pattern)) > 1:
        return [e for part in split_top(pattern) for e in expand(part)]
    if not pattern.startswith("(?:"):
        return [pattern]
    end = next(i for i, c, depth in _structure(pattern) if c == ")" and depth == 0)
    inner, rest = pattern[3:end], pattern[end + 1 :]
    if rest[:1] in ("*", "+", "{"):
        raise ValueError(f"Pattern {pattern!r} starts with a repeated group.")
    optional = rest[:1] == "?"
    rest = rest[1:] if optional else rest
    alternatives = split_top(inner) + ([""] if optional else [])
    return [e for alt in alternatives for e in expand(alt + rest)]


def _unit(pattern: str, i: int) -> tuple[str | None, int]:
    """The characters the unit at ``i`` may be (None: unknown) and where it ends."""
    c = pattern[i]
    if c == "\\":
        nxt = pattern[i + 1]
        return (_ESCAPES.get(nxt) if nxt.isalnum() else nxt), i + 2
    if c == "[":
        end = pattern.index("]", i + 2)
        body = pattern[i + 1 : end]
        if body.startswith("^"):
            return None, end + 1
        # The class's members among ASCII and its own characters (escapes decoded).
        member = re.compile(f"[{body}]").fullmatch
        chars = "".join(c for c in sorted(set(_ASCII) | set(body)) if member(c))
        return (chars if len(chars) <= MAX_CLASS else None), end + 1
    return (None if c in _META else c), i + 1


def heads(pattern: str) -> list[str]:
    """The heads one alternative of ``expand`` starts with: two or three characters
    if the first is ASCII (one if it is a repeated digit, ``\\d+``), else one.

    Raises:
        ValueError: The pattern does not start with such a literal head.
    """
    first, i = _unit(pattern, 0)
    quantifier = pattern[i : i + 1]
    if first is None or quantifier in ("?", "*", "{"):
        raise ValueError(f"Pattern {pattern!r} needs a literal head.")
    # One character is enough if none is an ASCII letter, e.g. 炸, [0-9十]+.
    if all(not c.isascii() or (c.isdigit() and quantifier == "+") for c in first):
        return list(first)
    second, j = _unit(pattern, i) if i < len(pattern) else (None, i)
    if quantifier == "+" or second is None or pattern[j : j + 1] in ("?", "*", "{"):
        raise ValueError(f"Pattern {pattern!r} needs a literal head of two characters.")
    # A third character when it is certain: "the" is a rarer key than "th".
    third, k = _unit(pattern, j) if j < len(pattern) else (None, j)
    if third is None or pattern[k : k + 1] in ("?", "*", "{"):
        return [a + b for a, b in product(first, second)]
    return [a + b + c for a, b, c in product(first, second, third)]


@dataclass(frozen=True)
class Bucket:
    """The matchers sharing one head; ``gate`` (their alternation, when there are
    several) rejects a position with one regex call instead of one per matcher."""

    gate: re.Pattern[str] | None
    members: tuple[int, ...]


@dataclass(frozen=True)
class PatternSet:
    """Compiled patterns; ``matches`` reports (start, end, pattern id) tuples."""

    # One per alternative: a plain string is tried with ``startswith`` (4x cheaper).
    matchers: tuple[re.Pattern[str] | str, ...]
    ids: tuple[int, ...]  # matcher index -> the pattern id it came from
    index: dict[str, Bucket]  # head -> the matchers that start with it
    starts: re.Pattern[str]  # where a head may start

    def matches(self, text: str) -> list[tuple[int, int, int]]:
        """Every match at every position, overlaps included, by start position."""
        found: list[tuple[int, int, int]] = []
        get, matchers, ids = self.index.get, self.matchers, self.ids
        for m in self.starts.finditer(text):
            i, key = m.start(), m.group(1)
            buckets = [get(key)]
            if len(key) > 1 and key[0] in _DIGITS:
                buckets.append(get(key[0]))  # "1" for \d+ patterns, "12x" for others
            for bucket in buckets:
                if bucket is None or (bucket.gate and not bucket.gate.match(text, i)):
                    continue
                for r in bucket.members:
                    matcher = matchers[r]
                    if matcher.__class__ is str:
                        if text.startswith(matcher, i):
                            found.append((i, i + len(matcher), ids[r]))
                    elif match := matcher.match(text, i):
                        found.append((i, match.end(), ids[r]))
        return found


def _matcher(alt: str, pattern: str) -> tuple[re.Pattern[str] | str, str]:
    """The matcher for one alternative and its regex source."""
    tail = "(?![a-z0-9])" if alt[-1:] in _WORD_END else ""
    if not tail and not _META.intersection(alt):
        return alt, re.escape(alt)
    source = f"(?:{alt}){tail}"
    try:
        regex = re.compile(source)
    except re.error as e:
        raise ValueError(f"Bad pattern {pattern!r}: {e}") from e
    if regex.groups:
        raise ValueError(f"Use (?:...), not a capturing group: {pattern!r}.")
    return regex, source


def _trie(heads: Iterable[str]) -> str:
    """A regex matching exactly the longest of ``heads`` at a position, as a trie
    so that ``re`` branches on one character at a time."""
    tree: dict = {}
    for head in heads:
        node = tree
        for c in head:
            node = node.setdefault(c, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [
            re.escape(c) + emit(child) for c, child in sorted(node.items()) if c
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)


def _starts(heads: set[str]) -> re.Pattern[str]:
    # Finds, at C speed, the heads in a text: a word start for ASCII letters and
    # digits, anywhere for other characters. Its match is the bucket's key.
    # A look-ahead, so that a head with a space ("a p") does not hide the next one.
    words = [h for h in heads if h[0] in _ALNUM]
    others = [h for h in heads if h[0] not in _ALNUM and h[0].isascii()]
    singles = "".join(re.escape(h) for h in sorted(heads) if not h[0].isascii())
    branches = [
        f"(?<![a-z0-9]){_trie(words)}" if words else "",
        _trie(others) if others else "",
        f"[{singles}]" if singles else "",
    ]
    return re.compile(f"(?=({'|'.join(b for b in branches if b) or '(?!)'}))")


def compile_patterns(patterns: Sequence[str]) -> PatternSet:
    """Compile ``patterns``; a pattern's id is its position in the sequence.

    A match that starts or ends with an ASCII letter or digit must not touch
    another one there ("kill" not in "skill"), as ``\\b`` would do for English;
    at a Chinese character a pattern matches anywhere.

    Raises:
        ValueError: A bad regex, a capturing group, or no literal head.
    """
    matchers: list[re.Pattern[str] | str] = []
    sources: list[str] = []
    ids: list[int] = []
    index: dict[str, list[int]] = {}
    for pid, pattern in enumerate(patterns):
        for alt in expand(pattern):
            matcher, source = _matcher(alt, pattern)
            for head in heads(alt):
                index.setdefault(head, []).append(len(matchers))
            matchers.append(matcher)
            sources.append(source)
            ids.append(pid)
    # Lookup tries the three-character key first and stops there if it exists.
    for head in [h for h in index if len(h) == 3 and h.isascii()]:
        index[head] = sorted(index[head] + index.get(head[:2], []))
    buckets = {
        head: Bucket(
            re.compile("|".join(sources[r] for r in members))
            if len(members) > 1
            else None,
            tuple(members),
        )
        for head, members in index.items()
    }
    return PatternSet(tuple(matchers), tuple(ids), buckets, _starts(set(index)))
