"""find_pii(): exact spans for real personal data, nothing for look-alikes.

ID and card numbers are synthetic: their check characters are computed here.
"""

from __future__ import annotations

import pytest

from engine.safety.findings import Finding
from engine.safety.pii import find_pii

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def make_id(first17: str) -> str:
    """Append the ISO 7064 MOD 11-2 check character."""
    total = sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def luhn_ok(digits: str) -> bool:
    doubled = [int(d) * (1 + i % 2) for i, d in enumerate(reversed(digits))]
    return sum(n // 10 + n % 10 for n in doubled) % 10 == 0


def make_card(prefix: str, length: int) -> str:
    """Pad ``prefix`` with zeros and append the Luhn check digit."""
    body = prefix.ljust(length - 1, "0")
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def broken(value: str) -> str:
    """``value`` with its last character changed, so its check fails."""
    return value[:-1] + ("1" if value[-1] != "1" else "2")


ID_A = make_id("44010619900307123")
ID_X = next(
    i for i in (make_id(f"31010419851231{n:03}") for n in range(999)) if i[-1] == "X"
)
UNIONPAY = make_card("622202", 19)
UNIONPAY_GROUPED = " ".join(UNIONPAY[i : i + 4] for i in range(0, 19, 4))
ID_WITH_LUHN = next(  # Gansu (62) IDs look like UnionPay cards (62...)
    i
    for i in (make_id(f"62010219800101{n:03}") for n in range(999))
    if i[-1].isdigit() and luhn_ok(i)
)


def found(text: str) -> list[tuple[str, str]]:
    return [(f.rule, text[f.start : f.end]) for f in find_pii(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "我的身份证号是11010519491231002X",
            [("cn_resident_id", "11010519491231002X")],
        ),
        ("身份证：11010519491231002x。", [("cn_resident_id", "11010519491231002x")]),
        (f"ID: {ID_A}.", [("cn_resident_id", ID_A)]),
        (f"号码{ID_X}谢谢", [("cn_resident_id", ID_X)]),
        ("card 4111 1111 1111 1111 exp 12/27", [("bank_card", "4111 1111 1111 1111")]),
        ("pay with 4111-1111-1111-1111.", [("bank_card", "4111-1111-1111-1111")]),
        ("visa4111111111111111", [("bank_card", "4111111111111111")]),
        ("Amex 3782 822463 10005 ok", [("bank_card", "3782 822463 10005")]),
        ("MC 5555 5555 5555 4444", [("bank_card", "5555 5555 5555 4444")]),
        (f"我的银行卡号是{UNIONPAY}，请转账", [("bank_card", UNIONPAY)]),
        (f"卡号 {UNIONPAY_GROUPED}。", [("bank_card", UNIONPAY_GROUPED)]),
        ("我的手机号是13800138000，谢谢", [("phone", "13800138000")]),
        (
            "手机１３８００１３８０００。",
            [("phone", "１３８００１３８０００")],
        ),  # full-width
        ("手机 +86 138 0013 8000 找我", [("phone", "+86 138 0013 8000")]),
        ("电话：+86-10-6552-9988", [("phone", "+86-10-6552-9988")]),
        ("call (555) 123-4567 now", [("phone", "(555) 123-4567")]),
        ("call +1 650-253-0000 now", [("phone", "+1 650-253-0000")]),
        ("office (212) 555-0123.", [("phone", "(212) 555-0123")]),
        ("mail zhang.san@example.com.", [("email", "zhang.san@example.com")]),
        ("邮箱是li_si+tag@mail.qq.cn谢谢", [("email", "li_si+tag@mail.qq.cn")]),
        ("qq 13800138000@qq.com", [("email", "13800138000@qq.com")]),
        (
            "server 8.8.8.8, lan 192.168.1.10",
            [("ip_address", "8.8.8.8"), ("ip_address", "192.168.1.10")],
        ),
        (
            "ipv6 2001:db8::8a2e:370:7334 ok",
            [("ip_address", "2001:db8::8a2e:370:7334")],
        ),
        ("mapped ::ffff:203.0.113.9 here", [("ip_address", "::ffff:203.0.113.9")]),
    ],
)
def test_finds_exact_spans(text, expected):
    assert found(text) == expected


def test_findings_carry_category_detector_score_and_label():
    text = f"身份证{ID_A} 卡4111111111111111 手机13800138000 a@b.cn 8.8.8.8"
    findings = find_pii(text)
    assert [f.label for f in findings] == ["ID", "CARD", "PHONE", "EMAIL", "IP"]
    assert {(f.category, f.detector, f.score) for f in findings} == {
        ("pii", "pii", 0.95)
    }
    assert findings[0] == Finding("pii", 3, 21, 0.95, "pii", "cn_resident_id", "ID")


@pytest.mark.parametrize(
    "text",
    [
        f"id {broken(ID_A)}",  # bad check character
        f"id {make_id('99010619900307123')}",  # no province 99
        f"id {make_id('44010619900230123')}",  # 30 February
        f"id {make_id('44010630000101123')}",  # born in the year 3000
        "card 4111 1111 1111 1112",  # fails Luhn
        f"card {broken(UNIONPAY)}",
        "ref 4111 1111 1111 1111 2222",  # a longer grouped number, not a card
        "version 1.2.3 and 1.2.3.4.5 and v1.2.3.4 and version 1.2.3.4",
        "版本号：2.0.1.3",
        "ts 1700000000000 at 2024-01-15 12:30:45",
        "订单号 20240115123456 and 202401151234567890",
        "order #88812345 shipped",
        "call 555-1234 in 2024",
        "local 127.0.0.1 and 0.0.0.0 and ::1",
        "bad 256.1.1.1 and 1.2.3",
        "std::vector a::b at 12:30:45",
        "revenue 3,141,592 and pi 3.14159265",
        "not an email: user@localhost, @handle",
    ],
)
def test_ignores_look_alikes(text):
    assert find_pii(text) == []


def test_an_id_that_also_passes_luhn_is_one_id():
    assert luhn_ok(ID_WITH_LUHN)
    assert found(f"号码{ID_WITH_LUHN}") == [("cn_resident_id", ID_WITH_LUHN)]


def test_neighbouring_values_are_separate_findings():
    text = "13800138000 13900139000, 4111111111111111 5555555555554444"
    assert found(text) == [
        ("phone", "13800138000"),
        ("phone", "13900139000"),
        ("bank_card", "4111111111111111"),
        ("bank_card", "5555555555554444"),
    ]


def test_findings_never_overlap():
    text = f"{ID_WITH_LUHN}, 13800138000@qq.com, +86 138 0013 8000, 8.8.8.8, {UNIONPAY}"
    findings = find_pii(text)
    assert len(findings) == 5
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:], strict=False))


def test_text_without_digits_or_at_signs_is_cheap_and_empty():
    assert find_pii("请帮我总结一下这份报告。Summarize this report, please." * 50) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Her SSN is 536-22-8741 and", "536-22-8741"),
        ("SSN: 123-45-6789.", "123-45-6789"),
        ("社会安全号 536-22-8741", "536-22-8741"),
    ],
)
def test_us_social_security_numbers(text, value):
    found = [f for f in find_pii(text) if f.rule == "us_ssn"]
    assert [text[f.start : f.end] for f in found] == [value]
    assert found[0].label == "SSN"


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "1536-22-8741",
        "536-22-87410",
        "5362-28-741",
    ],
)
def test_not_social_security_numbers(text):
    assert not [f for f in find_pii(text) if f.rule == "us_ssn"]
