"""`python -m engine.loadgen`: many concurrent requests at the HTTP API, timed.

Each level fires its requests at once (threads behind a barrier, one connection
each) and sorts every answer: a complete completion, a 503 with ``Retry-After``, or a
failure (a reset, a timeout, anything else). It prints a Markdown table with latency
percentiles; docs/BENCHMARKS.md has the numbers. Without ``--url`` it serves the
model itself, in process, through ``Engine`` and ``make_app`` on a free port.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_LEVELS = (10, 30, 50)
PROMPT = "Write a short story about a cat who learns to fly."


@dataclass(frozen=True)
class Outcome:
    """One request's fate: ``status`` None when no HTTP answer came back."""

    status: int | None
    latency_s: float
    complete: bool
    error: str | None = None


@dataclass(frozen=True)
class LoadReport:
    """One level's outcomes."""

    concurrency: int
    outcomes: tuple[Outcome, ...]
    wall_s: float

    @property
    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200 and o.complete]

    @property
    def busy(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 503 and o.complete]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not (o.complete and o.status in (200, 503))]

    def percentile(self, p: float, *, busy: bool = False) -> float:
        """Nearest-rank percentile of the answered (or 503) requests' latency, s."""
        times = sorted(o.latency_s for o in (self.busy if busy else self.answered))
        return times[max(math.ceil(p / 100 * len(times)) - 1, 0)] if times else 0.0

    def row(self) -> str:
        busy = f"{self.percentile(99, busy=True):.2f}" if self.busy else "-"
        return (
            f"| {self.concurrency} | {len(self.answered)} | {len(self.busy)} | "
            f"{len(self.failed)} | {self.percentile(50):.2f} | "
            f"{self.percentile(90):.2f} | {self.percentile(99):.2f} | {busy} | "
            f"{self.wall_s:.1f} |"
        )


TABLE_HEAD = (
    "| concurrent | answered | 503 | failed | p50 s | p90 s | p99 s | 503 p99 s "
    "| wall s |\n|---|---|---|---|---|---|---|---|---|"
)


def fire(
    url: str,
    body: dict[str, Any],
    concurrency: int,
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
) -> LoadReport:
    """Send ``concurrency`` copies of ``body`` to ``url`` at once; wait for all.

    Args:
        url: A completions endpoint, ``http://127.0.0.1:8080/v1/chat/completions``.
        body: The JSON request.
        concurrency: Requests in flight together (one connection each).
        api_key: Sent as ``Authorization: Bearer KEY``.
        timeout_s: A request still unanswered after this counts as a hang.
    """
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    outcomes: list[Outcome] = []
    barrier = threading.Barrier(concurrency)

    def run() -> None:
        barrier.wait()
        outcomes.append(send(url, raw, headers, timeout_s))

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadReport(concurrency, tuple(outcomes), time.perf_counter() - started)


def send(url: str, raw: bytes, headers: dict[str, str], timeout_s: float) -> Outcome:
    """POST once on a fresh connection; judge the answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    started = time.perf_counter()
    try:
        conn.request("POST", parts.path, body=raw, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as e:  # resets, timeouts
        return Outcome(None, time.perf_counter() - started, False, repr(e))
    finally:
        conn.close()
    latency = time.perf_counter() - started
    if response.status == 503:
        return Outcome(503, latency, bool(response.getheader("Retry-After")))
    return Outcome(response.status, latency, is_complete(data), data[:200].decode())


def is_complete(data: bytes) -> bool:
    """A whole completion: every choice finished, usage present."""
    try:
        reply = json.loads(data)
    except ValueError:
        return False
    choices = reply.get("choices") or []
    finished = all(c.get("finish_reason") in ("stop", "length") for c in choices)
    return bool(choices) and finished and "usage" in reply


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.loadgen", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="model to serve (or its name)")
    p.add_argument("--url", help="an already running server (default: serve here)")
    p.add_argument("--levels", type=int, nargs="+", default=list(DEFAULT_LEVELS))
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-queue", type=int, help="engine queue (default: engine's)")
    p.add_argument("--api-key")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    return p


def run_levels(url: str, args: argparse.Namespace, name: str) -> list[LoadReport]:
    body = {
        "model": name,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    endpoint = f"{url}/v1/chat/completions"
    options = {"api_key": args.api_key, "timeout_s": args.timeout}
    fire(endpoint, body, 1, **options)  # warm-up
    return [fire(endpoint, body, n, **options) for n in args.levels]


def main(argv: Sequence[str] | None = None) -> int:
    """Print a latency table for each concurrency level; 1 if any request failed.

    Returns:
        0 when every request got a complete answer or a 503 with Retry-After.
    """
    args = build_parser().parse_args(argv)
    if args.url:
        reports = run_levels(args.url.rstrip("/"), args, args.model)
    else:
        reports = _serve_and_run(args)
    print(TABLE_HEAD)
    for report in reports:
        print(report.row())
        for outcome in report.failed[:3]:
            print(f"  failed: {outcome}", file=sys.stderr)
    return 1 if any(r.failed for r in reports) else 0


def _serve_and_run(args: argparse.Namespace) -> list[LoadReport]:
    from engine.model_pool import ModelPool
    from engine.runtime import Engine
    from engine.server import make_app
    from engine.worker import DEFAULT_MAX_QUEUE

    with Engine(max_queue=args.max_queue or DEFAULT_MAX_QUEUE) as engine:
        pool = ModelPool(engine)
        name = pool.load(args.model).name
        with serving(make_app(engine, pool)) as url:
            return run_levels(url, args, name)


if __name__ == "__main__":
    raise SystemExit(main())
