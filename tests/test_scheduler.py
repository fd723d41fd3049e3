"""The scheduler on the engine thread: when a batch's chunks reach their clients."""

from __future__ import annotations

import itertools
import threading
from collections import deque

import mlx.core as mx
import pytest

from engine import Engine, SamplingParams
from engine import batch as batch_module
from engine.jobs import Ticket
from engine.kv_cache import LRUPromptCache
from engine.scheduler import Scheduler

PROMPTS = ([1, 5, 9, 3, 7, 2, 11, 4], [8, 2, 6])


@pytest.fixture(scope="module")
def engine_and_model(tiny_model_dir):
    with Engine(safety=None) as engine:
        yield engine, engine.load(str(tiny_model_dir))


def test_chunks_go_out_once_the_next_step_is_built(engine_and_model, monkeypatch):
    # Clients screen their chunks while the worker waits on MLX with the GIL
    # released, not while it builds the next step's graph.
    engine, model = engine_and_model
    params = SamplingParams(max_tokens=6, temperature=0)
    requests = [model.prepare(list(p), params) for p in PROMPTS]
    log: list[tuple] = []
    sample_rows, async_eval = batch_module.sample_rows, mx.async_eval

    def built(*args):
        log.append(("built",))
        return sample_rows(*args)

    def launch(*arrays):
        log.append(("launch",))
        return async_eval(*arrays)

    monkeypatch.setattr(batch_module, "sample_rows", built)
    monkeypatch.setattr(mx, "async_eval", launch)

    def work(models):
        stream = mx.new_stream(mx.default_device())
        scheduler = Scheduler(models, LRUPromptCache(), stream, make_room=lambda *_: 0)
        put = lambda side, chunk: log.append(("put", side, chunk))  # noqa: E731
        sides = deque(enumerate(requests))
        scheduler.submit(Ticket(sides, put, lambda: None, threading.Event()))
        while scheduler.busy:
            scheduler.tick()

    engine.worker.call(work).result()
    first_launch = log.index(("launch",))
    groups = 0
    for kind, group in itertools.groupby(enumerate(log), key=lambda e: e[1][0]):
        entries = list(group)
        start, end = entries[0][0], entries[-1][0]
        if kind != "put" or start < first_launch:
            continue
        if any(e[1][2].finish_reason for e in entries):
            continue  # the last step: its chunks go out before the last ones
        assert log[start - 1] == ("built",) and log[end + 1] == ("launch",)
        groups += 1
    assert groups >= 3  # the middle steps of 6 tokens, two rows each
    for side in (0, 1):
        chunks = [e[2] for e in log if e[0] == "put" and e[1] == side]
        assert sum(c.token is not None for c in chunks) == 6
        assert [c.finish_reason for c in chunks][-1] == "length"
