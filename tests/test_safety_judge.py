"""The model judge: answer parsing, and the plumbing through the engine."""

from __future__ import annotations

import pytest

from engine.runtime import Engine
from engine.safety.judge import ModelJudge, parse_llama_guard, parse_qwen3guard
from engine.safety.moderate import moderate


@pytest.mark.parametrize(
    ("answer", "categories"),
    [
        ("safe", []),
        ("\n\nunsafe\nS1,S10", ["violent_crimes", "hate"]),
        ("unsafe\nS9", ["indiscriminate_weapons"]),
        ("unsafe", ["violent_crimes"]),  # unsafe without a code still counts
        ("unsafe\nS99", ["violent_crimes"]),
        ("I cannot tell", []),
    ],
)
def test_llama_guard_answers(answer, categories):
    assert parse_llama_guard(answer) == categories


def test_qwen3guard_answers():
    answer = "Safety: Unsafe\nCategories: Violent, Jailbreak"
    assert parse_qwen3guard(answer) == ["violent_crimes", "prompt_injection"]
    assert parse_qwen3guard("Safety: Safe\nCategories: None") == []
    assert parse_qwen3guard("Safety: Controversial\nCategories: PII") == ["pii"]


def test_the_judge_runs_a_model_through_the_engine(tiny_model_dir):
    # A tiny random model stands in for the guard: the judge must send the text
    # through the chat template and hand the model's greedy answer to the parser.
    with Engine(safety=None) as engine:
        model = engine.load(str(tiny_model_dir))
        text = "a harmless sentence"
        expected = model.generate(
            [{"role": "user", "content": text}], max_tokens=8, temperature=0.0
        ).text
        seen = []

        def parse(answer: str) -> list[str]:
            seen.append(answer)
            return ["hate"]

        judge = ModelJudge(model, parse=parse, max_tokens=8)
        findings = judge(text)
        assert seen == [expected]
        assert [(f.category, f.start, f.end, f.detector) for f in findings] == [
            ("hate", 0, len(text), "judge")
        ]
        verdict = moderate(text, judge=judge)
        assert verdict.action == "block" and verdict.categories == ("hate",)
        assert judge(text, role="response")  # the answer as the assistant's turn


def test_the_judge_refuses_an_engine_that_filters(tiny_model_dir):
    with Engine() as engine:
        judge = ModelJudge(engine.load(str(tiny_model_dir)))
        with pytest.raises(ValueError, match="safety=None"):
            judge("text")
