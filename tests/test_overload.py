"""Concurrency and cancellation against a `silica serve` process on loopback.

Load: 10, 30 and 50 requests at once each get a complete answer or a 503 with
``Retry-After``, never a reset or a hang. Cancellation: a client that gives up
(streaming or not) frees the engine within a second; 20 abandoned long requests
leave a normal one answered within 5 seconds. docs/BENCHMARKS.md has the latency
table that ``python -m engine.loadgen`` prints.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from engine.loadgen import PROMPT, fire
from tests.served import CHAT, silica_serve

MAX_QUEUE = 24
LONG = {"model": "tiny", "messages": CHAT, "max_tokens": 240, "n": 16}  # ~6 s of work


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    with silica_serve(tiny_model_dir, root, "--max-queue", str(MAX_QUEUE)) as served:
        yield served


@pytest.fixture(scope="module")
def reference(server):
    reply = server.chat(max_tokens=8, temperature=0)
    return reply.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("concurrency", [10, 30, 50])
def test_concurrent_requests_get_an_answer_or_a_503(server, reference, concurrency):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 32,
        "temperature": 0,
    }
    report = fire(f"{server.url}/v1/chat/completions", body, concurrency, timeout_s=60)
    print(report.row())
    assert report.failed == [], report.failed[:3]  # no reset, no hang, no 5xx
    assert len(report.answered) + len(report.busy) == concurrency
    assert len(report.answered) >= min(concurrency, MAX_QUEUE)
    if concurrency > MAX_QUEUE + 1:  # one running and MAX_QUEUE waiting at most
        assert report.busy, "a full queue must answer 503"
    server.assert_alive(reference)


def give_up(server, timeout: float = 0.5) -> None:
    """Send a long non-streaming request and disconnect before it is answered."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=LONG, timeout=timeout)


def time_a_short_request(server) -> float:
    started = time.monotonic()
    reply = server.chat(max_tokens=4, temperature=0)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
    return time.monotonic() - started


def test_a_non_streaming_client_that_gives_up_frees_the_engine_in_a_second(
    server, reference
):
    alone = time_a_short_request(server)
    give_up(server)  # it was generating when the client went
    assert time_a_short_request(server) < 1.0 + alone
    server.assert_alive(reference)


def test_a_stream_that_disconnects_frees_the_engine_in_a_second(server, reference):
    alone = time_a_short_request(server)
    url = f"{server.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=LONG | {"stream": True}, timeout=30) as r:
        events = (line for line in r.iter_lines() if line.startswith("data: "))
        next(events), next(events)  # the role, then text: it is generating
    assert time_a_short_request(server) < 1.0 + alone
    server.assert_alive(reference)


def test_twenty_abandoned_requests_leave_a_normal_one_answered_in_5_s(
    server, reference
):
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: give_up(server, timeout=1.0), range(20)))
    started = time.monotonic()
    reply = server.chat(max_tokens=8, temperature=0)
    assert time.monotonic() - started < 5, "the abandoned requests kept running"
    assert reply.json()["choices"][0]["message"]["content"] == reference
    assert httpx.get(f"{server.url}/health").json()["queued"] == 0
    server.assert_alive(reference)
