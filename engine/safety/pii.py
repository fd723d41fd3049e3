"""Personal data in a text: Chinese resident IDs, bank cards, phones, emails, IPs.

Each rule finds candidates with a precompiled regex and keeps only values that
validate (checksum, Luhn, ``phonenumbers``, ``ipaddress``), so look-alikes such as
order numbers, version strings and timestamps stay unflagged. Spans cover the
value itself, not the words around it.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterator

from phonenumbers import Leniency, PhoneNumberMatcher

from engine.safety.findings import Finding

SCORE = 0.95  # every rule here validates its value
PHONE_REGIONS = ("CN", "US")  # numbers with a "+" country code match in any region
# "8613800138000" has 13; longer unbroken runs are timestamps, IDs, order numbers.
MAX_PLAIN_PHONE_DIGITS = 13
# Province-level codes of GB/T 2260 (the first two digits of a resident ID).
CN_PROVINCES = frozenset(
    [*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47)]
    + [*range(50, 55), *range(61, 66), 71, 81, 82]
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

# Look-behinds follow the first character class so that re can skip ahead to
# digits; a leading look-behind makes it try every position (3-4x slower).
_ID = re.compile(r"[1-9](?<![0-9][1-9])[0-9]{16}[0-9Xx](?![0-9])")
# 13-19 digits, unbroken or in groups of 3-6 split by single spaces or dashes
# ("4111 1111 1111 1111", "3782 822463 10005"); a grouped one must not be the
# middle of a longer grouped number.
_CARD = re.compile(
    r"[0-9](?<![0-9][0-9])(?:[0-9]{12,18}(?![0-9])"
    r"|(?<![0-9][ -][0-9])[0-9]{2,5}(?:[ -][0-9]{3,6}){1,5}(?![0-9]|[ -][0-9]))"
)
# ASCII look-behind: a Chinese character may touch the address ("邮箱是a@b.cn").
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)
# Not part of a longer dotted number (1.2.3.4.5) nor glued to a word (v1.2.3.4).
_IPV4 = re.compile(
    r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}(?![\w]|\.[0-9])"
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})(?![\w:])"
)
_VERSION_BEFORE = re.compile(
    r"(?:(?<![a-z])(?:version|ver\.?|release|v)|版本号?)\s*[:：]?\s*$", re.I
)
# Seven digits in a row, allowing the usual separators: the cheap test that gates
# IDs, cards and the (slow, pure Python) phonenumbers matcher.
_DIGIT_RUN = re.compile(r"[0-9](?:[ \t\-.()（）/]{0,3}[0-9]){6,}")
_DIGIT_GROUP = re.compile(r"[0-9]{3}")
_NON_DIGITS = re.compile(r"[^0-9]")
_IPV6_GROUP_SEPARATORS = re.compile(r"[:.]")
# Full-width ASCII ("１３８", "ａ＠ｂ．ｃｎ") reads as ASCII; same length, so spans
# carry over. Only digits or "＠" trigger it: "，" is in most Chinese text.
_FULL_WIDTH = re.compile("[\uff10-\uff19\uff20]")
_TO_ASCII = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
# Characters kept around a digit run for "+", "(" and the matcher's own checks.
_PHONE_CONTEXT = 4
# Overlaps keep the more specific rule: an email may hold a phone (QQ mail), an
# 18-digit ID may pass Luhn, and phonenumbers reads most digit runs as phones.
PRIORITY = ("email", "cn_resident_id", "bank_card", "us_ssn", "ip_address", "phone")
# A US social security number as written: area not 000, 666 or 9xx, group not 00,
# serial not 0000 (the SSA's rules), dashes required so plain numbers stay numbers.
_SSN = re.compile(
    r"(?<![0-9-])(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])"
)
LABELS = {
    "cn_resident_id": "ID",
    "bank_card": "CARD",
    "phone": "PHONE",
    "email": "EMAIL",
    "ip_address": "IP",
    "us_ssn": "SSN",
}


def is_cn_resident_id(value: str) -> bool:
    """True for an 18-character resident ID with a real province, a past birth
    date and a valid ISO 7064 MOD 11-2 check character."""
    if len(value) != 18 or int(value[:2]) not in CN_PROVINCES:
        return False
    try:
        born = datetime.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == value[17].upper()


def is_luhn_valid(digits: str) -> bool:
    """True if the digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """True if a 13-19 digit string has a card network's prefix and length (Visa,
    Mastercard, Amex, Diners, JCB, Discover, UnionPay, Maestro) and passes Luhn.

    Dates (2024...), millisecond timestamps (17...) and most order numbers have
    no network prefix, and 18-digit IDs are not a Visa or Mastercard length.
    """
    n, p2, p4 = len(digits), int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        length_ok = n in (13, 16, 19)
    elif 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        length_ok = n == 16
    elif p2 in (34, 37):
        length_ok = n == 15
    elif p2 in (30, 36, 38, 39):
        length_ok = 14 <= n <= 19
    else:  # JCB 35, Maestro 50/56-59, Discover/UnionPay 6, Chinese domestic 9
        length_ok = (p2 == 35 or digits[0] in "569") and 16 <= n <= 19
    return length_ok and is_luhn_valid(digits)


def _ids(text: str) -> Iterator[tuple[int, int]]:
    for m in _ID.finditer(text):
        if is_cn_resident_id(m.group()):
            yield m.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        value = m.group()
        digits = value.replace(" ", "").replace("-", "")
        if " " in value and "-" in value:
            continue  # mixed separators: a list of numbers, not one card
        if 13 <= len(digits) <= 19 and is_card_number(digits):
            yield m.span()


def _emails(text: str) -> Iterator[tuple[int, int]]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            yield m.span()


def _is_reportable_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Loopback and unspecified addresses (127.0.0.1, 0.0.0.0, ::1) identify nobody.
    return not (address.is_loopback or address.is_unspecified)


def _ips(text: str) -> Iterator[tuple[int, int]]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
                continue
            try:
                address = ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            if _is_reportable_ip(address):
                yield m.span()
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            # "a::b" and "fe80::1" are valid but read like C++ scopes or identify
            # nobody outside a LAN; want 3+ groups.
            if len([g for g in _IPV6_GROUP_SEPARATORS.split(m.group()) if g]) < 3:
                continue
            try:
                address = ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            if _is_reportable_ip(address):
                yield m.span()


def _phone_regions(run: str) -> tuple[str, ...]:
    # Try the likelier region first and stop at the first match: ten digits not
    # starting with 0 or 1 read as a US number, the rest as Chinese.
    digits = _NON_DIGITS.sub("", run)
    if len(digits) == 10 and digits[0] not in "01":
        return tuple(reversed(PHONE_REGIONS))
    return PHONE_REGIONS


def _uncovered(start: int, end: int, taken: list[Finding]) -> Iterator[tuple[int, int]]:
    """The parts of ``start:end`` outside every finding in ``taken``."""
    for f in sorted(taken, key=lambda f: f.start):
        if f.start >= end:
            break
        if f.end > start:
            if f.start > start:
                yield start, f.start
            start = max(start, f.end)
    if start < end:
        yield start, end


def _phone_windows(text: str, taken: list[Finding]) -> Iterator[tuple[int, int]]:
    # Digit runs, less what more specific findings cover (lists of IPs or cards
    # join into one run), with 7+ digits and a group of 3+: "1.1.1.1" or
    # "1-2-3-4-5-6-7" is no phone, and the matcher would take ~20 ms per 1,000.
    for m in _DIGIT_RUN.finditer(text):
        for lo, hi in _uncovered(m.start(), m.end(), taken):
            piece = text[lo:hi]
            if piece.isdigit() and len(piece) > MAX_PLAIN_PHONE_DIGITS:
                continue
            if _DIGIT_GROUP.search(piece) and sum(map(str.isdigit, piece)) >= 7:
                yield lo, hi


def _phones(text: str, taken: list[Finding]) -> Iterator[tuple[int, int]]:
    # phonenumbers scans a 1,000-character text in ~1.6 ms and a short window in
    # ~0.1-0.2 ms, so it sees only windows around candidate digit runs, with
    # context for "+", "(" and its own boundary checks.
    for start, end in _phone_windows(text, taken):
        lo = max(0, start - _PHONE_CONTEXT)
        window = text[lo : end + _PHONE_CONTEXT]
        for region in _phone_regions(text[start:end]):
            spans = [
                (lo + match.start, lo + match.end)
                for match in PhoneNumberMatcher(window, region, leniency=Leniency.VALID)
            ]
            yield from spans
            if spans:
                break  # "+86 ..." reads the same in every region


def resolve_overlaps(
    findings: list[Finding], priority: tuple[str, ...]
) -> list[Finding]:
    """Keep one finding per overlapping group: the earliest rule in ``priority``,
    then the longer span; return them sorted by start."""
    ranked = sorted(
        findings, key=lambda f: (priority.index(f.rule), f.start - f.end, f.start)
    )
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: (f.start, f.end))


def _found(rule: str, spans: Iterator[tuple[int, int]]) -> list[Finding]:
    return [
        Finding("pii", start, end, SCORE, "pii", rule, LABELS[rule])
        for start, end in sorted(set(spans))
    ]


def find_pii(text: str) -> list[Finding]:
    """Find personal data in ``text``.

    Rules: ``cn_resident_id`` [ID] (province code, birth date, MOD 11-2 check),
    ``bank_card`` [CARD] (13-19 digits, spaces or dashes between groups, Luhn, a
    card network's prefix and length), ``us_ssn`` [SSN] (AAA-GG-SSSS with the
    SSA's area, group and serial rules), ``phone`` [PHONE] (``phonenumbers``,
    regions CN and US, VALID leniency), ``email`` [EMAIL] and ``ip_address``
    [IP] (IPv4/IPv6 via ``ipaddress``; loopback and unspecified addresses are
    skipped). Full-width digits and letters count as ASCII.

    Args:
        text: The text as the user wrote it (not normalized).

    Returns:
        Non-overlapping findings (category "pii", detector "pii", score 0.95),
        sorted by start; ``start``/``end`` (end exclusive) index ``text``.
    """
    if _FULL_WIDTH.search(text):
        text = text.translate(_TO_ASCII)
    findings = _found("email", _emails(text)) + _found("ip_address", _ips(text))
    if _DIGIT_RUN.search(text):
        findings += _found("cn_resident_id", _ids(text))
        findings += _found("bank_card", _cards(text))
        findings += _found("us_ssn", (m.span() for m in _SSN.finditer(text)))
        findings = resolve_overlaps(findings, PRIORITY)
        findings += _found("phone", _phones(text, findings))
    return resolve_overlaps(findings, PRIORITY)
