"""Credentials in a text: cloud and SaaS keys, tokens, private keys, passwords.

Named ``credentials`` rather than ``secrets`` so it never shadows the standard
library module. Prefix-specific formats (AKIA..., ghp_..., eyJ...) score 0.95;
passwords in URIs 0.9; generic ``password=``/``api_key:`` assignments 0.8.

Placeholders are skipped, because documentation and config templates are full
of them: values made of one repeated character or only x/*/#/. (``xxxxxxxx``,
``********``), templates and variable references (``<your-key>``, ``${API_KEY}``,
``{{token}}``, ``$TOKEN``, ``os.environ["KEY"]``, ``getenv(...)``), snake_case
or camelCase identifiers (``password=user_password``), values containing
"example", "your", "placeholder", "dummy", "redacted" or "xxxx", and a few words
(``changeme``, ``password``, ``required``...). ``changeme`` is skipped although
real systems ship with it: it is far more often a template default.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.safety.findings import Finding
from engine.safety.pii import resolve_overlaps

PREFIXED_SCORE, URI_SCORE, ASSIGNMENT_SCORE = 0.95, 0.9, 0.8
PLACEHOLDER_WORDS = frozenset(
    ("changeme", "password", "passwd", "pass", "pwd", "pw", "secret", "token")
    + ("apikey", "example", "placeholder", "redacted", "required", "optional")
    + ("string", "undefined", "null", "none", "true", "false", "default")
)
PLACEHOLDER_PARTS = ("example", "your", "placeholder", "dummy", "redacted", "xxxx")
TEMPLATE_MARKS = ("{{", "${", "%(")
# Case-sensitive on purpose: under re.I the camelCase branch reads as
# [a-z]+(?:[a-z][a-z]+)+ and backtracks exponentially on long tokens.
_PLACEHOLDER = re.compile(
    r"(.)\1*|[xX*#.•_-]+|[$%][A-Za-z_].*"
    r"|[A-Za-z_][\w.]*[(\[].*|(?:os|process|self|env|config|settings)\..*"
    r"|[a-z]+(?:_[a-z]+)+|[A-Z]+(?:_[A-Z]+)+|[a-z]+(?:[A-Z][a-z]+)+",
    re.S,
)
# The look-behinds follow the first character class so that re can skip ahead.
_B64URL = "A-Za-z0-9_-"
# Matched against ASCII-lowercased text: re.I makes this scan 4x slower.
_KEYWORDS = {
    "PASSWORD": r"pass(?:words?|wd|phrase)?|pwd|密码|口令",
    "API_KEY": r"api[_-]?key|apikey|access[_-]?key|secret(?:[_-]?key)?"
    r"|client[_-]?secret|private[_-]?key|密钥",
    "TOKEN": r"(?:access|auth|refresh|bearer|api|session|bot)[_-]?token|token|令牌",
}
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Unquoted values: ASCII printable, no quotes, comma, semicolon or backquote; a
# Chinese character or full-width comma ends the value.
_BARE = r"[!#-&(-+\--:<-_a-~]"
_ASSIGNMENT = re.compile(
    r"(?<![a-z0-9])(?P<key>" + "|".join(_KEYWORDS.values()) + r")"
    r"[\"']?\s*(?P<sep>=>|:=|=|:|：|是|为)\s*"
    rf"(?:\"(?P<dq>[^\"\s][^\"\n]{{6,}}[^\"\s])\"|'(?P<sq>[^'\s][^'\n]{{6,}}[^'\s])'"
    rf"|(?P<bare>{_BARE}{{8,}}))"
)
_KEY_LABELS = [(re.compile(p), label) for label, p in _KEYWORDS.items()]
# Keys in docs: "AKIAIOSFODNN7EXAMPLE", "ghp_xxxxxxxx...", "sk-<your key>".
FAKE_KEY_PARTS = (*PLACEHOLDER_PARTS, "****", "<", "{")
_KEY_BODY = re.compile(r"[A-Za-z0-9+/]{32}")


def is_real_key(value: str) -> bool:
    """False for documentation keys: "EXAMPLE", "xxxx", "<...>", or 4 or fewer
    distinct characters after the 4-character prefix."""
    lower = value.lower()
    return not any(p in lower for p in FAKE_KEY_PARTS) and len(set(value[4:])) > 4


def has_key_body(block: str) -> bool:
    """True if a PEM block holds key material, not just "-----BEGIN ...-----"."""
    return _KEY_BODY.search(block) is not None


@dataclass(frozen=True)
class SecretRule:
    """One prefix-specific format: ``group`` 0 is the whole match."""

    name: str
    pattern: re.Pattern[str]
    label: str
    markers: tuple[str, ...]  # one must occur in the text, else skip the regex
    group: int = 0
    lowercase_markers: bool = False  # match ``markers`` against text.lower()
    check: Callable[[str], bool] = is_real_key


RULES = (
    SecretRule(
        "private_key",
        re.compile(
            # Groups 1-2 always take part (maybe empty): re fails a backreference
            # to a group that did not. The body never holds "-----", which keeps
            # the scan linear. No END line: take the base64 lines only.
            r"-----BEGIN ([A-Z0-9 ]*?)PRIVATE KEY((?: BLOCK)?)-----"
            r"(?:(?:(?!-----)[\s\S])*-----END \1PRIVATE KEY\2-----"
            r"|(?:\s*[A-Za-z0-9+/=]{16,})*)"
        ),
        "PRIVATE_KEY",
        ("PRIVATE KEY",),
        check=has_key_body,
    ),
    SecretRule(
        "jwt",
        re.compile(
            rf"eyJ(?<![{_B64URL}]eyJ)[{_B64URL}]{{10,}}\.[{_B64URL}]{{10,}}"
            rf"\.[{_B64URL}]{{16,}}(?![{_B64URL}])"
        ),
        "TOKEN",
        ("eyJ",),
    ),
    SecretRule(
        "aws_access_key_id",
        re.compile(r"A(?<![A-Z0-9]A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Z0-9])"),
        "API_KEY",
        ("AKIA", "ASIA"),
    ),
    SecretRule(
        "aws_secret_key",
        re.compile(
            r"aws_?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?"
            r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
            re.I,
        ),
        "API_KEY",
        ("secret",),
        group=1,
        lowercase_markers=True,
    ),
    SecretRule(
        "github_token",
        re.compile(
            r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,251}"
            r"|ithub_pat_[A-Za-z0-9_]{22,255})(?![A-Za-z0-9_])"
        ),
        "TOKEN",
        ("gh", "github_pat_"),
    ),
    SecretRule(
        "openai_key",
        re.compile(
            r"s(?<![A-Za-z0-9_-]s)k-(?:proj-|svcacct-|admin-|ant-)?"
            r"(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[0-9])"
            r"[A-Za-z0-9_-]{20,}"
        ),
        "API_KEY",
        ("sk-",),
    ),
    SecretRule(
        "slack_token",
        re.compile(r"x(?<![A-Za-z0-9]x)ox[abpr]-[A-Za-z0-9-]{10,}"),
        "TOKEN",
        ("xox",),
    ),
    SecretRule(
        "google_api_key",
        re.compile(r"A(?<![A-Za-z0-9_-]A)Iza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
        "API_KEY",
        ("AIza",),
    ),
    SecretRule(
        "stripe_key",
        re.compile(r"[sr](?<![A-Za-z0-9][sr])k_(?:live|test)_[0-9A-Za-z]{16,}"),
        "API_KEY",
        ("k_live_", "k_test_"),
    ),
    SecretRule(
        "bearer_token",
        re.compile(r"bearer\s+([A-Za-z0-9._~+/-]{16,}=*)", re.I),
        "TOKEN",
        ("bearer",),
        group=1,
        lowercase_markers=True,
    ),
)
PRIORITY = (*(r.name for r in RULES), "uri_password", "assignment")
_URI_PASSWORD = re.compile(
    r"[A-Za-z](?<![A-Za-z0-9+.-][A-Za-z])[A-Za-z0-9+.-]*://[^\s:/@]+:([^\s/@]+)@"
)


def is_placeholder(value: str) -> bool:
    """True for template values such as ``xxxxxxxx``, ``<your-key>``, ``${KEY}``."""
    lower = value.lower()
    return (
        lower in PLACEHOLDER_WORDS
        or any(p in lower for p in PLACEHOLDER_PARTS + TEMPLATE_MARKS)
        or ("<" in value and ">" in value)
        or _PLACEHOLDER.fullmatch(value) is not None
    )


def _secret(start: int, end: int, score: float, rule: str, label: str) -> Finding:
    return Finding("secrets", start, end, score, "secrets", rule, label)


def _prefixed(text: str, lowered: str) -> Iterator[Finding]:
    for rule in RULES:
        haystack = lowered if rule.lowercase_markers else text
        if not any(marker in haystack for marker in rule.markers):
            continue
        for m in rule.pattern.finditer(text):
            start, end = m.span(rule.group)
            if rule.check(text[start:end]):
                yield _secret(start, end, PREFIXED_SCORE, rule.name, rule.label)


def _uri_passwords(text: str) -> Iterator[Finding]:
    if "://" in text:
        for m in _URI_PASSWORD.finditer(text):
            if not is_placeholder(m.group(1)):
                start, end = m.span(1)
                yield _secret(start, end, URI_SCORE, "uri_password", "PASSWORD")


def _looks_random(value: str) -> bool:
    # After ":" in prose ("secret: Anthropic"), a plain word is not a credential.
    return any(c.isdigit() or not c.isalnum() for c in value) or (
        any(c.isupper() for c in value[1:]) and any(c.islower() for c in value)
    )


def _assignments(text: str, lowered: str) -> Iterator[Finding]:
    for m in _ASSIGNMENT.finditer(lowered):
        group = next(g for g in ("dq", "sq", "bare") if m.group(g) is not None)
        start, end = m.span(group)
        if group == "bare":
            # A sentence may end right after the value: "password=hunter2hunter."
            end -= len(m.group(group)) - len(m.group(group).rstrip(".)]}"))
            prose = m.group("sep") not in ("=", ":=", "=>")
            if prose and not _looks_random(text[start:end]):
                continue
        value = text[start:end]
        if len(value) < 8 or is_placeholder(value):
            continue
        label = next(lab for p, lab in _KEY_LABELS if p.fullmatch(m.group("key")))
        yield _secret(start, end, ASSIGNMENT_SCORE, "assignment", label)


def find_secrets(text: str) -> list[Finding]:
    """Find credentials in ``text``.

    Rules and labels: ``private_key`` [PRIVATE_KEY] (a whole PEM block, or
    header plus body when the END line is missing); ``jwt``, ``github_token``
    (ghp_/gho_/ghs_/ghu_/ghr_, github_pat_), ``slack_token`` (xoxa/b/p/r-)
    [TOKEN]; ``aws_access_key_id`` (AKIA/ASIA + 16), ``aws_secret_key`` (40
    characters after an aws_secret_access_key label), ``openai_key`` (sk-,
    sk-proj-...), ``google_api_key`` (AIza + 35), ``stripe_key`` (sk_/rk_ live
    or test) [API_KEY]; ``bearer_token`` (after "Bearer ") [TOKEN];
    ``uri_password`` (the password of scheme://user:pw@host)
    [PASSWORD]; ``assignment`` (``password=``, ``api_key:``, ``secret=``,
    ``token=``, ``密码：`` ... with a value of 8+ characters; the label follows
    the key). Placeholders are skipped (see the module docstring).

    Args:
        text: The text as the user wrote it (not normalized).

    Returns:
        Non-overlapping findings (category "secrets", detector "secrets"), sorted
        by start; spans cover the secret value only.
    """
    # Spans must carry over: str.lower() grows "İ" to two characters, and then
    # the (slower, for non-ASCII text) ASCII-only translate is used instead.
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = text.translate(_ASCII_LOWER)
    findings = [*_prefixed(text, lowered), *_uri_passwords(text)]
    if any(k in lowered for k in ("pass", "pwd", "key", "secret", "token")) or (
        any(k in text for k in ("密码", "口令", "密钥", "令牌"))
    ):
        findings += _assignments(text, lowered)
    return resolve_overlaps(findings, PRIORITY)
