"""Which batch a request joins, and the row it brings."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from engine.batch_rows import batch_kind, kv_options, new_batch, new_row
from engine.batch_speculative import SpecBatch, SpecRow
from engine.schema import SamplingParams
from engine.worker import GenerateRequest


@pytest.fixture(scope="module")
def loaded(engine, model):
    return engine.worker.call(lambda models: models[model.name]).result()


def request(**kw) -> GenerateRequest:
    params = kw.pop("params", SamplingParams(max_tokens=4, temperature=0))
    return GenerateRequest("tiny", (1, 2, 3), params, **kw)


def test_kinds(loaded):
    assert batch_kind(request(), loaded) == "plain"
    assert batch_kind(request(speculation="lookup"), loaded) == "lookup"
    assert batch_kind(request(speculation="auto"), loaded) == "lookup"
    drafted = request(speculation="draft", draft_model="tiny")
    assert batch_kind(drafted, loaded) is None  # draft models decode on their own
    rotating = replace(loaded, info=replace(loaded.info, max_kv_size=32))
    assert kv_options(rotating).active and batch_kind(request(), rotating) is None


def test_rows_carry_sampling_and_processors(loaded):
    run = SimpleNamespace(tokens=[1, 2, 3], sequence=SimpleNamespace(spec=None))
    greedy = new_row("plain", run, request(), 0, 0)
    assert greedy.sampler is None and greedy.processors == [] and greedy.tag is run
    params = SamplingParams(max_tokens=4, temperature=0.8, repetition_penalty=1.2)
    sampled = new_row("plain", run, request(params=params), 0, 1)
    assert sampled.sampler is not None and len(sampled.processors) == 1
    assert sampled.seen.tolist() == [2, 3]  # the uncached part of the prompt
    lookup = new_row("lookup", run, request(speculation="lookup"), 0, 0)
    assert isinstance(lookup, SpecRow) and run.sequence.spec is not None  # its stats
    assert isinstance(new_batch("lookup", loaded, None), SpecBatch)
