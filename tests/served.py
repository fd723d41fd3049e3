"""`silica serve` in a subprocess, for tests that must see the same process survive."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

CHAT = [{"role": "user", "content": "hello there"}]


@dataclass(frozen=True)
class Served:
    """A running server: its URL, its process and where it logs."""

    url: str
    process: subprocess.Popen
    log: Path

    def chat(self, timeout: float = 30, **fields) -> httpx.Response:
        body = {"model": "tiny", "messages": CHAT} | fields
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=timeout)

    def post(self, path: str, raw: bytes, **headers: str) -> httpx.Response:
        headers = {"Content-Type": "application/json"} | headers
        return httpx.post(f"{self.url}/v1/{path}", content=raw, headers=headers)

    def assert_alive(self, reference: str) -> None:
        """Same process, ``/health`` ok, and a normal request gets its usual answer."""
        assert self.process.poll() is None, self.log.read_text()[-2000:]
        health = httpx.get(f"{self.url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        reply = self.chat(max_tokens=8, temperature=0)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == reference


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def silica_serve(model_dir: Path, root: Path, *flags: str) -> Iterator[Served]:
    """Serve the tiny model as "tiny" (API only) until the block ends."""
    port, log = free_port(), root / "serve.log"
    command = [sys.executable, "-m", "engine.cli", "serve", "--no-ui"]
    command += ["--port", str(port), "--model", f"tiny={model_dir}", *flags]
    env = {**os.environ, "SILICA_CACHE_DIR": str(root / "cache")}
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall it
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_up(served)
        yield served
    finally:
        process.terminate()
        process.wait(30)


def _wait_until_up(served: Served, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert served.process.poll() is None, served.log.read_text()[-2000:]
        try:
            httpx.get(f"{served.url}/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(served.url)


def body(**fields) -> bytes:
    """A chat request body for the tiny model, as bytes."""
    return json.dumps({"model": "tiny", "messages": CHAT} | fields).encode()
