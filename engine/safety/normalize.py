"""Undo the usual evasions before lexicon matching, keeping a map to the original.

``normalize`` folds each character (NFKC, casefold, accents, homoglyphs, traditional
to simplified Chinese, invisible characters), collapses whitespace, reads leetspeak
inside words and joins words split by separators ("k.i.l.l", "炸 弹"). Every step
keeps ``offsets`` so that a match in the normalized text maps back to a span of the
text the user wrote. ``decoded_runs`` finds base64, hex and URL-encoded runs.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote_plus

import opencc

DATA = Path(__file__).parent / "data"
INVISIBLE = frozenset(
    chr(c)
    for c in (
        *range(0x200B, 0x2010),  # zero-width space/joiners, LRM, RLM
        *range(0x202A, 0x202F),  # bidi embeddings and overrides
        *range(0x2060, 0x2065),  # word joiner, invisible operators
        *range(0x2066, 0x206A),  # bidi isolates
        0xFEFF,  # BOM / zero-width no-break space
        0x00AD,  # soft hyphen
        0x180E,  # Mongolian vowel separator
    )
)
LINE_BREAKS = frozenset("\n\u2028\u2029\x85")
# Combining accents (also zalgo and strike-through overlays); the kana voicing
# marks are elsewhere, so Japanese is left intact.
_MARKS = re.compile(
    "[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
)
# Stands for "folds to 0 or 2+ characters" in the fast one-to-one translate pass.
_SENTINEL = "\ue000"
_LEET = str.maketrans("013457@$", "oieastas")
_LEET_RUN = re.compile(r"[013457@$]+")  # read as letters only when next to a-z
_SPACES = re.compile(r"[ \n]{2,}")
# Single letters split by the same separator each time: "k.i.l.l", "k i l l",
# "k_1_l_l"; one separator, so "a b.o.m.b" keeps its "a". Leet digits count as
# letters here; the first unit must be a real letter. The look-behind comes
# after [a-z] so that re can skip to letters quickly.
_UNIT = r"[013457a-z](?![^\W_])"
_LATIN_RUN = re.compile(rf"[a-z](?<![^\W_].)([^\w\n]|_){_UNIT}(?:\1{_UNIT})+")
# English one-letter words before a space-split word: "a b o m b" -> "a bomb".
ARTICLES = ("a ", "i ")
# CJK characters split by the same separator: "炸 弹", "炸*弹". Sentence punctuation
# (",", "!", "?", ":", ";" after NFKC) is left alone, it separates real words.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_CJK_RUN = re.compile(rf"[{_CJK}]([ *\-_.·•・|/\\~+#^=&])[{_CJK}](?:\1[{_CJK}])*")
_B64 = "A-Za-z0-9+/_-"  # standard and URL-safe alphabets; ASCII, so CJK may touch it
_BASE64 = re.compile(rf"(?<![={_B64}])[{_B64}]{{16,}}={{0,2}}(?![={_B64}])")
_HEX = re.compile(
    r"(?<![0-9A-Za-z])(?:0x)?[0-9A-Fa-f]{2}(?:[ :]?[0-9A-Fa-f]{2}){7,}(?![0-9A-Za-z])"
)
_HEX_ESCAPES = re.compile(r"(?:\\x[0-9A-Fa-f]{2}){8,}")  # \x69\x67...
# Anchored at token starts: an unanchored leading \S* rescans every token.
_URL = re.compile(r"(?<!\S)\S*%[0-9A-Fa-f]{2}\S*")
_ALL_HEX = re.compile(r"[0-9A-Fa-f]+")
_HEX_NOISE = re.compile(r"^0x|\\x|[ :]")


@dataclass(frozen=True)
class Normalized:
    """Normalized text and, per character, where it came from.

    ``offsets`` has ``len(text) + 1`` entries: ``offsets[i]`` is the index in the
    original of the character that produced ``text[i]`` (non-decreasing), and
    ``offsets[-1]`` is the original's length.
    """

    text: str
    offsets: tuple[int, ...]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Map ``text[start:end]`` to the smallest original span covering every
        character that produced it (characters removed inside the span included).

        Raises:
            ValueError: ``start:end`` is not a span of ``text``.
        """
        if not 0 <= start <= end <= len(self.text):
            raise ValueError(f"Span {start}:{end} is outside 0:{len(self.text)}.")
        if start == end:
            return self.offsets[start], self.offsets[start]
        return self.offsets[start], self.offsets[end - 1] + 1


@dataclass(frozen=True)
class DecodedRun:
    """An encoded run in a text: its span there (end exclusive) and its decoding."""

    start: int
    end: int
    text: str
    encoding: str  # "base64" | "hex" | "url"


@cache
def _homoglyphs() -> dict[int, str]:
    table = {}
    for line in (DATA / "normalize_homoglyphs.tsv").read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            char, letter, _name = line.split("\t")
            table[ord(char)] = letter
    return table


@cache
def _t2s() -> Callable[[str], str]:
    return opencc.OpenCC("t2s").convert


def _fold_char(char: str) -> str:
    """What one character becomes: "" for invisible ones, else 1+ characters."""
    if char in INVISIBLE:
        return ""
    if char.isspace():
        return "\n" if char in LINE_BREAKS else " "
    # Homoglyphs before casefold (capital Greek MU looks like M) and after it.
    text = unicodedata.normalize("NFKD", char).translate(_homoglyphs()).casefold()
    text = _MARKS.sub("", unicodedata.normalize("NFKD", text))
    text = unicodedata.normalize("NFC", text).translate(_homoglyphs())
    # Per character, so the offset map stays exact; phrase-level t2s is lost.
    return "".join(_t2s()(c) if c >= "\u3400" else c for c in text)


class _FoldTable(dict):
    """A ``str.translate`` table filled on first use of each code point.

    A pure memo: each entry depends only on its key, so sharing it is safe.
    """

    def __init__(self, fold: Callable[[str], str]) -> None:
        super().__init__()
        self._fold = fold

    def __missing__(self, code: int) -> str:
        value = self[code] = self._fold(chr(code))
        return value


def _fold_one(char: str) -> str:
    folded = _FOLD[ord(char)]
    return folded if len(folded) == 1 else _SENTINEL


_FOLD = _FoldTable(_fold_char)
_FOLD_ONE = _FoldTable(_fold_one)


def _fold(text: str) -> tuple[str, list[int]]:
    # Fast path: one C-speed translate; only characters that fold to 0 or 2+
    # characters (marked with the sentinel) go through the Python loop.
    single = text.translate(_FOLD_ONE)
    if _SENTINEL not in single:
        return single, list(range(len(text)))
    parts: list[str] = []
    offsets: list[int] = []
    last = 0
    i = single.find(_SENTINEL)
    while i >= 0:
        parts.append(single[last:i])
        offsets.extend(range(last, i))
        folded = _FOLD[ord(text[i])]
        parts.append(folded)
        offsets.extend([i] * len(folded))
        last = i + 1
        i = single.find(_SENTINEL, last)
    parts.append(single[last:])
    offsets.extend(range(last, len(text)))
    return "".join(parts), offsets


def _delete(
    text: str, offsets: list[int], drop: list[tuple[int, int]]
) -> tuple[str, list[int]]:
    """Remove the sorted, disjoint ``drop`` spans from ``text`` and ``offsets``."""
    if not drop:
        return text, offsets
    parts: list[str] = []
    kept: list[int] = []
    last = 0
    for start, end in drop:
        parts.append(text[last:start])
        kept.extend(offsets[last:start])
        last = end
    parts.append(text[last:])
    kept.extend(offsets[last:])
    return "".join(parts), kept


def _read_leet(m: re.Match[str]) -> str:
    text, start, end = m.string, m.start(), m.end()
    # "" < "a", so the end of the text never counts as a letter.
    if "a" <= text[start - 1 : start] <= "z" or "a" <= text[end : end + 1] <= "z":
        return m.group().translate(_LEET)
    return m.group()


def _space_drops(text: str) -> list[tuple[int, int]]:
    # Keep one character of each run: its first newline, else its first space.
    drop = []
    for m in _SPACES.finditer(text):
        keep = text.find("\n", m.start(), m.end())
        keep = m.start() if keep < 0 else keep
        drop += [(m.start(), keep), (keep + 1, m.end())]
    return [(a, b) for a, b in drop if a < b]


def _join_split_words(text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """Drop the separators of "k.i.l.l" and "炸*弹" runs; read leet inside them."""
    runs = [(m.start(), m.end(), m.group()) for m in _CJK_RUN.finditer(text)]
    for m in _LATIN_RUN.finditer(text):
        start, run = m.start(), m.group().translate(_LEET)
        if run.startswith(ARTICLES) and len(run) >= 7:  # 4+ units
            start, run = start + 2, run[2:]
        runs.append((start, m.end(), run))
    runs.sort()
    if not runs:
        return text, offsets
    parts: list[str] = []
    kept: list[int] = []
    last = 0
    for start, end, run in runs:
        # Units and separators alternate one character each: keep every other.
        parts += (text[last:start], run[::2])
        kept += offsets[last:start]
        kept += offsets[start:end:2]
        last = end
    parts.append(text[last:])
    kept += offsets[last:]
    return "".join(parts), kept


def normalize(text: str) -> Normalized:
    """Normalize ``text`` so that disguised words match plain lexicon entries.

    Folds each character (NFKC, casefold, combining accents dropped, Cyrillic and
    Greek look-alikes to Latin, traditional to simplified Chinese per character,
    zero-width and bidi controls removed), collapses whitespace runs to one space
    (or one newline), reads leetspeak next to letters ("k1ll" -> "kill", "2024"
    stays) and joins 3+ single letters or 2+ CJK characters split by one
    repeated separator ("k.i.l.l" -> "kill", "炸*弹" -> "炸弹"; a leading "a" or
    "i" of a space-split run stays a word: "a b o m b" -> "a bomb").

    Args:
        text: The text as the user wrote it.

    Returns:
        The normalized text with its offset map into ``text``.
    """
    folded, offsets = _fold(text)
    folded, offsets = _delete(folded, offsets, _space_drops(folded))
    folded = _LEET_RUN.sub(_read_leet, folded)
    folded, offsets = _join_split_words(folded, offsets)
    offsets.append(len(text))
    return Normalized(folded, tuple(offsets))


def is_readable(text: str) -> bool:
    """True if ``text`` has a letter and is (95%+) printable characters."""
    if not any(c.isalpha() for c in text):
        return False
    printable = sum(c.isprintable() or c in "\t\n\r" for c in text)
    return printable >= 0.95 * len(text)


def _decode_base64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1 or ("=" in run and len(run) % 4):
        return None
    if ("-" in body or "_" in body) and ("+" in body or "/" in body):
        return None  # mixes the standard and the URL-safe alphabets
    padded = body.replace("-", "+").replace("_", "/") + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _decode_hex(run: str) -> str | None:
    digits = _HEX_NOISE.sub("", run)
    try:
        return bytes.fromhex(digits).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _decode_url(run: str) -> str | None:
    try:
        decoded = unquote_plus(run, errors="strict")
    except UnicodeDecodeError:
        return None
    return decoded if decoded != run else None


def decoded_runs(text: str) -> list[DecodedRun]:
    """Find encoded runs in ``text`` that decode to readable text.

    Base64 (standard or URL-safe, 16+ characters, padded or not), hex (16+ digits,
    even length, optionally ``0x``, ``\\x`` or space/colon separated) and
    URL-encoded runs (a whitespace-free run with %XX escapes; ``+`` reads as a
    space). A hex-only run is never also read as base64.

    Returns:
        The runs sorted by start; spans index ``text``.
    """
    runs = []
    for pattern, decode, encoding, marker in (
        (_HEX, _decode_hex, "hex", ""),
        (_HEX_ESCAPES, _decode_hex, "hex", "\\x"),
        (_BASE64, _decode_base64, "base64", ""),
        (_URL, _decode_url, "url", "%"),
    ):
        if marker not in text:
            continue  # skip the regex scan; most texts have no "%" or "\\x"
        for m in pattern.finditer(text):
            if encoding == "base64" and _ALL_HEX.fullmatch(m.group()):
                continue
            decoded = decode(m.group())
            if decoded is not None and is_readable(decoded):
                runs.append(DecodedRun(m.start(), m.end(), decoded, encoding))
    return sorted(runs, key=lambda r: (r.start, r.end))
