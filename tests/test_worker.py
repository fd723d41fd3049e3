"""The engine worker's queue: how jobs reach the scheduler."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from engine.schema import SamplingParams
from engine.worker import EngineWorker, GenerateRequest, Job


class RecordingScheduler:
    """Stands in for the Scheduler: records what is submitted; busy once it has."""

    def __init__(self) -> None:
        self.submitted: list = []
        self.handed_out = 0

    def hand_out(self) -> None:
        self.handed_out += 1

    @property
    def busy(self) -> bool:
        return bool(self.submitted)

    def submit(self, ticket) -> None:
        self.submitted.append(ticket)


def task() -> tuple:
    request = GenerateRequest("tiny", (1, 2, 3), SamplingParams(max_tokens=4))
    return ("generate", Job(request), None)


@pytest.mark.parametrize("window,expected", [(5.0, 2), (0.0, 1)])
def test_a_job_on_an_idle_engine_waits_for_company(window, expected):
    # The worker thread is not started: _take is driven here, as its loop would.
    worker = EngineWorker(burst_window_s=window)
    worker._tasks.put(task())
    later = threading.Timer(1.0, lambda: worker._tasks.put(task()))
    later.start()
    scheduler = RecordingScheduler()
    try:
        assert worker._take(scheduler)
    finally:
        later.join()
    # With a window, the second request arrived in time to start with the first (so
    # both batch); without one, the first started alone.
    assert len(scheduler.submitted) == expected


def test_held_chunks_go_out_before_a_call_runs():
    # A call (a model load, a benchmark) may hold the worker for seconds: the chunks
    # batches stepped out must not wait for it.
    worker = EngineWorker(burst_window_s=0.0)
    scheduler = RecordingScheduler()
    scheduler.submitted.append("a batch")  # busy: _take does not wait for work
    seen, future = [], Future()

    def call(models):
        seen.append(scheduler.handed_out)

    worker._tasks.put(("call", call, future))
    assert worker._take(scheduler)
    assert future.done() and seen == [1]
