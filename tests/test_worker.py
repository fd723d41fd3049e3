"""The engine worker's queue: how jobs reach the scheduler."""

from __future__ import annotations

import threading

import pytest

from engine.schema import SamplingParams
from engine.worker import EngineWorker, GenerateRequest, Job


class RecordingScheduler:
    """Stands in for the Scheduler: records what is submitted; busy once it has."""

    def __init__(self) -> None:
        self.submitted: list = []

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
