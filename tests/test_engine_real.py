"""The engine on the real SmolLM2: greedy tokens as mlx-lm, whole characters, cache."""

from __future__ import annotations

import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from engine import Engine, SamplingParams

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(max_tokens=40, temperature=0)
PROMPTS = [
    "The history of the printing press begins",
    "请用中文介绍一下长城。",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
]


@pytest.fixture(scope="module")
def smollm2():
    with Engine() as engine:
        yield engine.load("smollm2-135m-instruct")


@pytest.mark.parametrize("prompt", PROMPTS, ids=["english", "chinese", "code"])
def test_greedy_equals_mlx_lm_generate(smollm2, prompt):
    from mlx_lm.utils import load

    model, tokenizer = load(smollm2.info.path)
    messages = [{"role": "user", "content": prompt}]
    tokens = smollm2.encode(messages)
    theirs = [
        r.token
        for r in stream_generate(
            model, tokenizer, tokens, max_tokens=40, sampler=make_sampler(0.0)
        )
    ]
    ours = smollm2.generate(messages, GREEDY).choices[0].tokens
    assert list(ours) == [t for t in theirs if t not in tokenizer.eos_token_ids]


def test_streamed_chinese_never_splits_a_character(smollm2):
    prompt = "中文：春天来了，花开了。春天来了，"  # raw, so SmolLM2 keeps to Chinese
    params = SamplingParams(max_tokens=31, temperature=0)
    chunks = list(smollm2.stream(prompt, params))
    text = "".join(c.text for c in chunks)
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in text) >= 5, text
    assert all("\ufffd" not in c.text for c in chunks)
    assert text == smollm2.generate(prompt, params).text


def test_chat_turn_two_hits_the_cache_and_matches_a_cold_run(smollm2):
    turn1 = [{"role": "user", "content": "What is the capital of France?"}]
    answer = smollm2.generate(turn1, GREEDY)
    assert "Paris" in answer.text
    turn2 = [
        *turn1,
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": "And of Italy?"},
    ]
    warm = smollm2.generate(turn2, GREEDY)
    assert warm.usage.cached_tokens > 30
    with Engine() as engine:
        cold = engine.load(smollm2.info.path).generate(turn2, GREEDY)
    assert cold.usage.cached_tokens == 0
    assert warm.choices[0].tokens == cold.choices[0].tokens
    assert "Rome" in warm.text
