"""Draft-model speculation inside continuous batches: greedy equality with decoding
alone, caches in step, batching through the scheduler, seeded sampling, solo rules."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import replace
from types import SimpleNamespace

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from engine import Engine, SamplingParams
from engine.batch import prefill
from engine.batch_draft import DraftBatch, prefill_draft
from engine.batch_rows import batch_key, batch_kind
from engine.batch_speculative import SpecRow
from engine.jobs import Ticket
from engine.kv_cache import LRUPromptCache
from engine.scheduler import Scheduler
from engine.side_by_side import Side
from engine.worker import GenerateRequest
from tests.test_batch import PROMPTS
from tests.test_speculative import plain_greedy, tiny_llama

LENGTHS = [20, 7, 14, 20]  # rows leave at different steps
TEXTS = ["the cat sat on the mat and", "a dog", "hello there, my old friend"]


@pytest.fixture(scope="module")
def stream() -> mx.Stream:
    return mx.default_stream(mx.default_device())


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def engine():
    """Safety off: random text from random models must reach the tests unscreened."""
    with Engine(safety=None) as engine:
        yield engine


@pytest.fixture(scope="module")
def other(engine, tmp_path_factory):
    """A second random tiny model with the same tokenizer: a draft mostly rejected."""
    from convert import ConvertOptions, convert_model
    from tests.tiny_gguf import write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-other")
    write_tiny_gguf(root / "tiny.gguf", seed=1)
    options = ConvertOptions(dtype="float32")
    converted = convert_model(
        str(root / "tiny.gguf"), root / "mlx", options, progress=False
    )
    return engine.load(str(converted.path), name="tiny-other")


def join(batch: DraftBatch, prompt: list[int], n: int, stream) -> SimpleNamespace:
    """Prefill ``prompt`` alone on both models, take the greedy first token, join."""
    cache = make_prompt_cache(batch.model)
    first = mx.argmax(prefill(batch.model, cache, prompt, stream), axis=-1).item()
    sequence = SimpleNamespace(max_tokens=n, spec=None)
    tag = SimpleNamespace(tokens=list(prompt), output=[first], sequence=sequence)
    params = SamplingParams(max_tokens=n, temperature=0)
    request = SimpleNamespace(params=params, num_draft_tokens=3, speculation="draft")
    row = SpecRow.make(tag, request, index=0, sampler=None, seen_from=len(prompt))
    row.start(first)
    draft_cache = prefill_draft(batch.draft_model, prompt, stream)
    batch.add([row], [cache], draft_caches=[draft_cache])
    return tag


def assert_draft_holds_history(batch: DraftBatch, i: int, stream) -> None:
    """Row i's draft KV equals a fresh prefill of its history but the pending token."""
    tag = batch.rows[i].tag
    fresh = make_prompt_cache(batch.draft_model)
    prefill(batch.draft_model, fresh, tag.tokens + tag.output[:-1], stream)
    for held, want in zip(batch.draft_cache, fresh, strict=True):
        got = held.extract(i)
        assert got.offset == want.offset
        assert mx.allclose(got.keys, want.keys[..., : want.offset, :], atol=1e-4)


def decode_all(batch: DraftBatch, stream, plan: dict[int, list[int]]) -> list:
    """Step the batch; before step s the prompts ``plan[s]`` join; rows leave at
    their LENGTHS. Checks the caches stay in step after every round."""
    tags, step = [], 0
    while step <= max(plan) or len(batch):
        for p in plan.get(step, []):
            tags.append(join(batch, PROMPTS[p], LENGTHS[p], stream))
        if len(batch):
            for row, new in zip(batch.rows, batch.step(), strict=True):
                row.tag.output.extend(t for t, _ in new)
            offsets = [
                c.offset.tolist() for c in (batch.cache[0], batch.draft_cache[0])
            ]
            assert offsets[0] == offsets[1]
            done = [
                i
                for i, r in enumerate(batch.rows)
                if len(r.tag.output) >= r.tag.sequence.max_tokens
            ]
            ended = [batch.rows[i].tag for i in done]
            for i in done:
                assert_draft_holds_history(batch, i, stream)
            for tag, cache in zip(ended, batch.remove(done), strict=True):
                # The target part leaves with the prompt and every token but the last.
                assert cache[0].offset == len(tag.tokens) + len(tag.output) - 1
        step += 1
    return tags


@pytest.mark.parametrize("draft_kind", ["self", "damped"])
def test_draft_rounds_in_a_batch_keep_greedy_output(target, stream, draft_kind):
    draft = target if draft_kind == "self" else tiny_llama(0, damping=0.5)
    batch = DraftBatch(target, draft, stream)
    tags = decode_all(batch, stream, {0: [0, 1, 2], 2: [3]})
    want = [
        plain_greedy(target, p, n, stream)
        for p, n in zip(PROMPTS, LENGTHS, strict=True)
    ]
    assert [tag.output for tag in tags] == want
    assert batch.cache is None and batch.draft_cache is None
    stats = [tag.sequence.spec for tag in tags]
    if draft_kind == "self":
        assert all(s.accepted == s.drafted > 0 for s in stats)
    else:  # rows rejected different amounts: rollbacks shifted rows
        assert len({s.accepted for s in stats}) > 1
        assert all(s.drafted > s.accepted for s in stats)


def tokens_of(chunks: list) -> tuple[int, ...]:
    return tuple(c.token for c in chunks if c.token is not None)


def greedy_sides(model, draft) -> tuple[list[SamplingParams], list[Side]]:
    """Prompts of different lengths; one ends by stop, one by length, early."""
    params = [
        SamplingParams(max_tokens=24, temperature=0, repetition_penalty=3.0),
        SamplingParams(max_tokens=20, temperature=0, stop=("U",)),
        SamplingParams(max_tokens=6, temperature=0),
    ]
    sides = [
        Side(model, t, p, draft=draft, speculation="draft")
        for t, p in zip(TEXTS, params, strict=True)
    ]
    return params, sides


def together(engine, sides: list[Side]) -> dict[int, list]:
    chunks: dict[int, list] = {}
    for side, chunk in engine.compare(sides):
        chunks.setdefault(side, []).append(chunk)
    return chunks


@pytest.mark.parametrize("draft_kind", ["self", "other"])
def test_concurrent_draft_streams_match_greedy_alone(engine, model, other, draft_kind):
    draft = model if draft_kind == "self" else other
    params, sides = greedy_sides(model, draft)
    got = together(engine, sides)
    for side, p in enumerate(params):
        alone = model.generate(TEXTS[side], p).choices[0]
        assert tokens_of(got[side]) == alone.tokens
        assert got[side][-1].finish_reason == alone.finish_reason
    assert got[1][-1].finish_reason == "stop" and len(tokens_of(got[1])) < 20
    last = [chunks[-1].stats for chunks in got.values()]
    if draft_kind == "self":  # the draft is the target: every draft is accepted
        assert all(s.acceptance_rate == 1.0 for s in last)
        assert all(s.tokens_per_forward > 1.5 for s in last)
    else:
        assert all(s.acceptance_rate < 0.5 for s in last)
        assert all(1.0 <= s.tokens_per_forward < 2.0 for s in last)


def schedule(engine, requests: list[GenerateRequest], extra=None):
    """Run ``requests`` as one side-by-side job through a Scheduler of our own on
    the engine thread; return chunks by (side, index) and the batches of each tick.
    ``extra(models)`` adds models to the scheduler's."""

    def work(models):
        stream = mx.new_stream(mx.default_device())
        held_models = {**models, **(extra(models) if extra else {})}
        scheduler = Scheduler(
            held_models, LRUPromptCache(), stream, make_room=lambda *_: None
        )
        chunks: dict[tuple[int, int], list] = {}

        def put(side, chunk):
            chunks.setdefault((side, chunk.index), []).append(chunk)

        sides = deque(enumerate(requests))
        scheduler.submit(Ticket(sides, put, lambda: None, threading.Event()))
        held = []
        while scheduler.busy:
            scheduler.tick()
            held.append(scheduler.batches)
        return chunks, held

    return engine.worker.call(work).result()


def test_the_scheduler_batches_draft_requests_by_draft_model(engine, model, other):
    params, _ = greedy_sides(model, None)
    # Long enough that no request ends in the first round (one of 5 tokens).
    params = [replace(p, max_tokens=max(p.max_tokens, 12)) for p in params]
    requests = [
        model.prepare(t, p, draft=d, speculation="draft")
        for d in (model, other)
        for t, p in zip(TEXTS, params, strict=True)
    ]
    chunks, held = schedule(engine, requests)
    mine, theirs = ("tiny", "draft", "tiny"), ("tiny", "draft", "tiny-other")
    # Two drafts, two batches, side by side; each held all three of its requests.
    assert held[0] == {mine: 3, theirs: 3}
    assert all(set(h) <= {mine, theirs} for h in held)
    for side, request in enumerate(requests):
        alone = model.generate(list(request.tokens), request.params).choices[0]
        assert tokens_of(chunks[(side, 0)]) == alone.tokens


def sampled_sides(model, other) -> list[Side]:
    """Seeded draws (one near-greedy with a penalty and top-p, one of n=2) beside a
    greedy row."""
    params = [
        SamplingParams(max_tokens=16, temperature=0.9, seed=7, n=2),
        SamplingParams(
            max_tokens=12, temperature=0.3, top_p=0.9, seed=3, repetition_penalty=3.0
        ),
        SamplingParams(max_tokens=10, temperature=0),
    ]
    return [
        Side(model, t, p, draft=other, speculation="draft")
        for t, p in zip(TEXTS, params, strict=True)
    ]


def by_completion(got: dict[int, list]) -> dict[tuple[int, int], tuple[int, ...]]:
    """Each completion's tokens by (side, index)."""
    out: dict[tuple[int, int], list] = {}
    for side, chunks in got.items():
        for c in chunks:
            out.setdefault((side, c.index), []).append(c)
    return {key: tokens_of(chunks) for key, chunks in out.items()}


def test_seeded_sampling_in_a_draft_batch_repeats(engine, model, other):
    sides = sampled_sides(model, other)
    first, second = together(engine, sides), together(engine, sides)
    runs = by_completion(first)
    assert runs == by_completion(second) and len(runs) == 4
    assert [len(runs[(0, i)]) for i in (0, 1)] == [16, 16]
    assert all(c.finish_reason != "error" for s in first for c in first[s])
    greedy = model.generate(TEXTS[2], sides[2].params).choices[0].tokens
    assert runs[(2, 0)] == greedy  # a greedy row beside sampled ones stays exact
    # The same draws from the scheduler, seen holding them in one draft batch.
    requests = [model.prepare(s.prompt, s.params, draft=other) for s in sides]
    chunks, held = schedule(engine, requests)
    assert max(h.get(("tiny", "draft", "tiny-other"), 0) for h in held) == 4
    assert {key: tokens_of(c) for key, c in chunks.items()} == runs


def test_a_draft_request_with_a_quantized_kv_cache_decodes_alone(engine, model):
    def quantized(models):
        loaded = models["tiny"]
        return {"tiny-q8": replace(loaded, info=replace(loaded.info, kv_bits=8))}

    tokens = tuple(model.encode(TEXTS[0]))
    params = SamplingParams(max_tokens=12, temperature=0)
    requests = [
        GenerateRequest("tiny-q8", tokens, params, "draft", draft_model="tiny"),
        GenerateRequest("tiny", tokens, params, "draft", draft_model="tiny-q8"),
    ]
    chunks, held = schedule(engine, requests, quantized)
    assert held and not any(held)  # never a batch: each decoded alone
    want = model.generate(TEXTS[0], params).choices[0].tokens
    for side in range(2):
        assert tokens_of(chunks[(side, 0)]) == want
        assert chunks[(side, 0)][-1].stats.tokens_per_forward > 1.0


def test_draft_requests_batch_only_with_plain_caches_and_one_vocab(engine, model):
    loaded = engine.worker.call(lambda models: models["tiny"]).result()
    params = SamplingParams(max_tokens=4, temperature=0)
    request = GenerateRequest("tiny", (1, 2), params, "draft", draft_model="d")
    assert batch_kind(request, loaded, loaded) == "draft"
    assert batch_key(request, "draft") == ("tiny", "draft", "d")
    assert batch_kind(request, loaded) is None  # the draft is not loaded
    quantized = replace(loaded, info=replace(loaded.info, kv_bits=8))
    assert batch_kind(request, loaded, quantized) is None
    assert batch_kind(request, quantized, loaded) is None
    assert batch_kind(request, loaded, replace(loaded, model=tiny_llama(0))) is None
    auto = replace(request, speculation="auto")
    assert batch_kind(auto, loaded, loaded) is None  # picks its source alone


def test_sampled_rows_with_the_target_as_draft_accept_every_draft(engine, model):
    # q is p (processors and top-p included), so min(1, p/q) accepts every draft;
    # a one-hot q, or processors that missed the drafts before, would reject some.
    sides = sampled_sides(model, model)
    requests = [model.prepare(s.prompt, s.params, draft=model) for s in sides]
    chunks, held = schedule(engine, requests)
    assert max(h.get(("tiny", "draft", "tiny"), 0) for h in held) == 4
    stats = [c[-1].stats for c in chunks.values()]
    assert all(s.acceptance_rate == 1.0 and s.tokens_per_forward > 2 for s in stats)
