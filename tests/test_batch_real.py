"""Batched decoding on the real SmolLM2: concurrent greedy streams, plain and with
prompt lookup, give exactly the tokens each prompt gives alone."""

from __future__ import annotations

import pytest

from engine import Engine, SamplingParams, Side

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(max_tokens=48, temperature=0)
PROMPTS = [
    "What is the capital of France?",
    "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog, "
    "and then the dog sleeps under the old oak tree by the river.",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "List three colours of the rainbow, one per line, and nothing else.",
    "Summarize: The printing press, invented by Johannes Gutenberg around 1440, "
    "made books cheaper and spread literacy across Europe within decades. "
    "Printed pamphlets then carried the ideas of the Reformation and of science.",
]


@pytest.fixture(scope="module")
def smollm2():
    with Engine(safety=None) as engine:
        yield engine, engine.load("smollm2-135m-instruct")


def together(engine, sides) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {i: [] for i in range(len(sides))}
    for side, chunk in engine.compare(sides):
        if chunk.token is not None:
            tokens[side].append(chunk.token)
    return tokens


@pytest.mark.parametrize("speculation", [None, "lookup"])
def test_concurrent_greedy_streams_equal_their_runs_alone(smollm2, speculation):
    engine, model = smollm2
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    sides = [Side(model, m, GREEDY, speculation=speculation) for m in messages]
    got = together(engine, sides)  # first, so the batch prefills cold prompts
    alone = [list(model.generate(m, GREEDY).choices[0].tokens) for m in messages]
    assert [got[i] for i in range(len(PROMPTS))] == alone
    assert len({len(model.encode(m)) for m in messages}) == len(PROMPTS)
