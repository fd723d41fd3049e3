"""Batched decoding on tiny random llamas: equality with one-at-a-time decoding,
joining and leaving between steps, and the engine's continuous batching."""

from __future__ import annotations

from types import SimpleNamespace

import mlx.core as mx
import pytest
from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache

from engine import SamplingParams
from engine.batch import Batch, Row, can_batch, prefill
from engine.batch_speculative import SpecBatch, SpecRow
from tests.test_speculative import plain_greedy, tiny_llama

PROMPTS = [[1, 5, 9, 3, 7, 2, 11, 4], [8, 2], [4, 4, 6, 1, 9], [3, 1, 3, 1, 3, 1, 3]]
GREEDY = SamplingParams(max_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def stream() -> mx.Stream:
    return mx.default_stream(mx.default_device())


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0)


def handle(prompt: list[int], n: int) -> SimpleNamespace:
    """What the scheduler tags a row with: its prompt, output and token budget."""
    sequence = SimpleNamespace(max_tokens=n, spec=None)
    return SimpleNamespace(tokens=list(prompt), output=[], sequence=sequence)


def join(batch, model, prompt: list[int], n: int, stream, *, lookup: bool = False):
    """Prefill ``prompt`` alone, take its greedy first token and join ``batch``."""
    cache = make_prompt_cache(model)
    first = mx.argmax(prefill(model, cache, prompt, stream), axis=-1).item()
    tag = handle(prompt, n)
    tag.output.append(first)
    if lookup:
        request = SimpleNamespace(
            params=GREEDY, num_draft_tokens=3, speculation="lookup"
        )
        row = SpecRow.make(tag, request, index=0, sampler=None, seen_from=len(prompt))
    else:
        row = Row(tag, None)
    row.start(first)
    batch.add([row], [cache])
    return tag


def run(batch, model, stream, plan: dict[int, list[int]], n: int, **kw) -> list:
    """Step ``batch``; before step s, join the prompts ``plan[s]``; rows leave once
    they have ``n`` tokens. Returns each prompt's handle, in plan order."""
    tags, step = [], 0
    while step <= max(plan) or len(batch):
        for prompt in plan.get(step, []):
            tags.append(join(batch, model, prompt, n, stream, **kw))
        if len(batch):
            for row, new in zip(batch.rows, batch.step(), strict=True):
                row.tag.output.extend(t for t, _ in new)
            done = [i for i, r in enumerate(batch.rows) if len(r.tag.output) >= n]
            tags_done = [batch.rows[i].tag for i in done]
            for tag, cache in zip(tags_done, batch.remove(done), strict=True):
                # It holds the prompt and every token but the last (never fed).
                assert cache[0].offset == len(tag.tokens) + len(tag.output) - 1
        step += 1
    return tags


def test_a_batch_decodes_each_prompt_as_alone(target, stream):
    expected = [plain_greedy(target, p, 16, stream) for p in PROMPTS]
    tags = run(Batch(target, stream), target, stream, {0: PROMPTS}, 16)
    got = [tag.output[:16] for tag in tags]
    assert got == expected


def test_rows_join_and_leave_between_steps(target, stream):
    plan = {0: PROMPTS[:2], 3: PROMPTS[2:3], 7: PROMPTS[3:]}
    expected = [
        plain_greedy(target, p, n, stream)
        for p, n in zip(PROMPTS, [9] * 4, strict=True)
    ]
    tags = run(Batch(target, stream), target, stream, plan, 9)
    got = [tag.output[:9] for tag in tags]
    assert got == expected


def test_a_leaving_row_takes_exactly_its_tokens(target, stream):
    batch = Batch(target, stream)
    short, long = PROMPTS[1], PROMPTS[0]
    tags = [join(batch, target, prompt, 20, stream) for prompt in (long, short)]
    for _ in range(4):  # the first call launches a step and returns no token yet
        for row, new in zip(batch.rows, batch.step(), strict=True):
            row.tag.output.extend(t for t, _ in new)
    assert [len(tag.output) for tag in tags] == [4, 4] and batch.ahead == 2
    [cache] = batch.remove([1])  # the prompt + every token but the last
    assert cache[0].offset == cache[0].keys.shape[2] == len(short) + 3
    # The row that stays also holds its 4th token, fed by the step launched ahead.
    assert len(batch) == 1 and batch.cache[0].offset.tolist() == [len(long) + 4]
    assert batch.ahead == 1
    assert batch.remove([0]) and batch.cache is None and batch.ahead == 0


def test_lookup_rounds_in_a_batch_keep_greedy_output(target, stream):
    expected = [plain_greedy(target, p, 20, stream) for p in PROMPTS]
    batch = SpecBatch(target, stream)
    plan = {0: PROMPTS[:3], 2: PROMPTS[3:]}
    tags = run(batch, target, stream, plan, 20, lookup=True)
    assert [tag.output[:20] for tag in tags] == expected
    stats = [tag.sequence.spec for tag in tags]
    # Rows accepted different numbers of drafts, so rollbacks shifted some rows.
    assert len({s.accepted for s in stats}) > 1
    assert any(s.drafted > s.accepted for s in stats)


def test_only_plain_kv_caches_batch(target):
    assert can_batch(make_prompt_cache(target))
    assert not can_batch([RotatingKVCache(max_size=16)])
    assert not can_batch([])


def test_requests_decode_together_and_match_their_runs_alone(engine, model):
    from engine import Side

    params = [
        GREEDY,
        SamplingParams(max_tokens=12, temperature=0.8, seed=5, n=2),
        SamplingParams(max_tokens=6, temperature=0, logprobs=True, top_logprobs=2),
        SamplingParams(max_tokens=12, temperature=0, repetition_penalty=1.5),
        SamplingParams(max_tokens=12, temperature=0, stop=("e",)),
    ]
    prompts = ["the cat sat", "a dog", "hello there friend", "xyz", "abc"]
    alone = [model.generate(p, s) for p, s in zip(prompts, params, strict=True)]
    sides = [Side(model, p, s) for p, s in zip(prompts, params, strict=True)]
    chunks: dict[tuple[int, int], list] = {}
    for side, chunk in engine.compare(sides):
        chunks.setdefault((side, chunk.index), []).append(chunk)
    for (side, index), got in chunks.items():
        single = alone[side].choices[index]
        assert tuple(c.token for c in got if c.token is not None) == single.tokens
        assert "".join(c.text for c in got) == single.text
        assert got[-1].finish_reason == single.finish_reason
        assert got[-1].stats.completion_tokens == len(single.tokens)
    assert len(chunks) == 6  # n=2 gives two completions
    logprobs = [c.logprob for c in chunks[(2, 0)] if c.logprob]
    assert [lp.token for lp in logprobs] == list(alone[2].choices[0].tokens)
    assert [lp.top[0][0] for lp in logprobs] == [lp.token for lp in logprobs]


def test_one_request_cancelled_leaves_the_others_running(engine, model):
    long = SamplingParams(max_tokens=120, temperature=0)
    first, second = model.stream("one", long), model.stream("two", long)
    assert next(first).finish_reason is None
    head = next(second)
    first.cancel()
    assert list(first)[-1].finish_reason == "cancelled"
    rest = list(second)
    expected = model.generate("two", long).choices[0]
    assert rest[-1].finish_reason == expected.finish_reason
    got = [head.token] + [c.token for c in rest if c.token is not None]
    assert tuple(got) == expected.tokens
    assert engine.queued == (0, engine.worker.max_queue)
