"""The streaming guard: nothing of a masked span is ever shown; a block stops it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine.safety.guard import HOLD_CHARS, MAX_WORD, StreamGuard
from engine.safety.moderate import moderate
from engine.safety.policy import Policy

DEV = Path(__file__).parent / "data" / "safety_dev.jsonl"
MIXED = (
    "Sure! You can reach Li Wei at 13800138000 or li.wei@example.com. "
    "他的身份证号是11010519491231002X，谢谢。 That is all for today, have a nice day."
)


def stream(guard: StreamGuard, text: str, sizes: list[int]) -> list[str]:
    out, at = [], 0
    for size in sizes:
        out.append(guard.push(text[at : at + size]))
        at += size
    out.append(guard.push(text[at:]))
    out.append(guard.close())
    return out


def masked_items() -> list[dict]:
    items = [json.loads(line) for line in DEV.read_text().splitlines() if line]
    return [i for i in items if i.get("spans")]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13])
def test_streamed_output_is_the_redacted_text(step):
    out = stream(StreamGuard(), MIXED, [step] * (len(MIXED) // step))
    assert "".join(out) == moderate(MIXED, "response").redacted_text
    assert "[PHONE]" in "".join(out) and "13800138000" not in "".join(out)


def test_no_character_of_a_masked_span_is_ever_shown():
    # Every PII/secret item of the dev set, streamed in random token-sized pieces:
    # the text shown so far never holds a prefix of a span the filter masks.
    rng = random.Random(0)
    checked = 0
    for item in masked_items():
        text = item["text"]
        verdict = moderate(text, item["role"])
        masked = [
            f
            for f in verdict.triggered
            if Policy().rules[f.category].action == "redact"
        ]
        if not masked:
            continue
        sizes = [rng.randint(1, 6) for _ in range(len(text))]
        shown = ""
        guard = StreamGuard(role=item["role"])
        for piece in stream(guard, text, sizes):
            shown += piece
            for f in masked:
                secret = text[f.start : f.end]
                # the first characters of the value, as written, never appear
                assert secret[: max(4, len(secret) // 2)] not in shown, item["id"]
        assert shown == verdict.redacted_text, item["id"]
        checked += 1
    assert checked >= 20


def test_short_text_is_held_until_the_end():
    guard = StreamGuard()
    assert guard.push("Hello there.") == ""  # shorter than the held tail
    assert guard.close() == "Hello there."


def test_long_clean_text_flows_with_a_bounded_lag():
    text = "The quick brown fox jumps over the lazy dog. " * 10
    guard = StreamGuard()
    shown = "".join(guard.push(c) for c in text)
    assert len(text) - len(shown) <= HOLD_CHARS + 8
    assert shown + guard.close() == text


def test_a_block_stops_the_stream_and_drops_the_held_text():
    text = (
        "Of course. Here is my plan to build a pipe bomb and hurt people at the "
        "school tomorrow morning, step one"
    )
    guard = StreamGuard()
    shown = "".join(guard.push(c) for c in text)
    assert guard.blocked and guard.verdict.action == "block"
    assert "bomb" not in shown
    assert guard.push(" more") == "" and guard.close() == ""
    assert any(f.category == "indiscriminate_weapons" for f in guard.triggered)


def test_warn_findings_pass_through_unchanged():
    policy = Policy.from_dict({"categories": {"pii": {"action": "warn"}}})
    guard = StreamGuard(policy=policy)
    shown = "".join(stream(guard, MIXED, [4] * 40))
    assert shown == MIXED and guard.triggered


def test_a_run_longer_than_a_word_is_let_through_in_pieces():
    text = "x" * 3000  # a minified line: no break to wait for
    guard = StreamGuard()
    shown = "".join(guard.push(c) for c in text)
    assert len(shown) >= len(text) - MAX_WORD - HOLD_CHARS
    assert shown + guard.close() == text
