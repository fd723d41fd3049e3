"""Hostile requests against a `silica serve` process, by category.

For every case: the documented error (status, OpenAI error shape, a message that says
what to fix), then the same process still answers ``/health`` and a normal request
gets its usual answer. Categories: bad parameters, encoding, model selection, memory;
concurrency and cancellation are in test_overload.py.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from engine.memory_budget import weight_file_bytes
from tests.served import CHAT, body, silica_serve

BODY_LIMIT = 1 << 16
TINY_KV = 512  # bytes per token: 2 layers x 2 kv heads x 16 x (k, v) x float32
LONG_PROMPT = "hello " * 300  # over the tiny model's 256-token context


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    # Room for the weights and ~300 tokens of KV cache: any one request fits, a
    # request that drafts with a second cache of the same size does not.
    budget_gb = (weight_file_bytes(tiny_model_dir) + 300 * TINY_KV) / 1e9
    root = tmp_path_factory.mktemp("served")
    flags = ["--max-body-bytes", str(BODY_LIMIT), "--memory-budget-gb", f"{budget_gb}"]
    with silica_serve(tiny_model_dir, root, *flags) as served:
        yield served


@pytest.fixture(scope="module")
def reference(server):
    reply = server.chat(max_tokens=8, temperature=0)
    return reply.json()["choices"][0]["message"]["content"]


def case(category, name, raw, status, fragment, path="chat/completions", **headers):
    return pytest.param(path, raw, status, fragment, headers, id=f"{category}-{name}")


def with_(raw: bytes, key: str, literal: bytes) -> bytes:
    """``raw`` with ``"key": literal`` added as bytes (for what json cannot write)."""
    return raw[:-1] + b', "' + key.encode() + b'": ' + literal + b"}"


def with_bytes(raw: bytes) -> bytes:
    """A chat body whose message has ``raw`` bytes inside its string."""
    return body(messages=[{"role": "user", "content": "hi @@"}]).replace(b"@@", raw)


COMPLETION = json.dumps({"model": "tiny", "prompt": LONG_PROMPT}).encode()
CASES = [
    case("params", "temperature NaN", with_(body(), "temperature", b"NaN"), 400, "NaN"),
    case("params", "top_p Infinity", with_(body(), "top_p", b"Infinity"), 400, "Infinity"),  # noqa: E501
    case("params", "temperature 1e999", with_(body(), "temperature", b"1e999"), 400, "out of range"),  # noqa: E501
    case("params", "temperature 2.5", body(temperature=2.5), 400, "temperature must be between"),  # noqa: E501
    case("params", "max_tokens 0", body(max_tokens=0), 400, "max_tokens must be between"),  # noqa: E501
    case("params", "max_tokens string", body(max_tokens="8"), 400, "max_tokens must be an integer"),  # noqa: E501
    case("params", "n 17", body(n=17), 400, "n must be between 1 and 16"),
    case("params", "n true", body(n=True), 400, "n must be an integer"),
    case("params", "17 stops", body(stop=[f"s{i}" for i in range(17)]), 400, "at most 16"),  # noqa: E501
    case("params", "long stop", body(stop="x" * 257), 400, "1 to 256 characters"),
    case("params", "empty stop", body(stop=["a", ""]), 400, "1 to 256 characters"),
    case("params", "stop not text", body(stop=[7]), 400, "1 to 256 characters"),
    case("params", "logit_bias 1000", body(logit_bias={"5": 1000}), 400, "logit_bias value"),  # noqa: E501
    case("params", "seed 2**64", body(seed=1 << 64), 400, "seed must be between"),
    case("params", "top_logprobs 21", body(logprobs=True, top_logprobs=21), 400, "top_logprobs"),  # noqa: E501
    case("params", "prompt over the context", COMPLETION, 400, "Shorten the prompt", "completions"),  # noqa: E501
    case("params", "not an object", b"[1, 2]", 400, "must be a JSON object"),
    case("params", "empty body", b"", 400, "not valid JSON"),
    case("encoding", "invalid UTF-8", with_bytes(b"\xff"), 400, "not valid UTF-8"),
    case("encoding", "UTF-8 surrogate", with_bytes(b"\xed\xa0\x80"), 400, "not valid UTF-8"),  # noqa: E501
    case("encoding", "UTF-16", body().decode().encode("utf-16"), 400, "not valid UTF-8"),  # noqa: E501
    case("encoding", "lone surrogate", body(messages=[{"role": "user", "content": "\ud800"}]), 400, "lone surrogate"),  # noqa: E501
    case("encoding", "surrogate stop", body(stop="\udfff"), 400, "lone surrogate"),
    case("encoding", "deep nesting", b"[" * 20_000 + b"]" * 20_000, 400, "not valid JSON"),  # noqa: E501
    case("encoding", "5000-digit number", with_(body(), "seed", b"9" * 5000), 400, "not valid JSON"),  # noqa: E501
    case("encoding", "oversized body", body(stop="x" * BODY_LIMIT), 413, "over 65536 bytes"),  # noqa: E501
    case("encoding", "foreign Host", body(), 400, "Host header", Host="evil.example"),
    case("models", "path traversal", body(model="../../../../etc/passwd"), 404, "does not exist"),  # noqa: E501
    case("models", "absolute path", body(model="/etc"), 404, "does not exist"),
    case("models", "hub repo", body(model="HuggingFaceTB/SmolLM2-135M"), 404, "does not exist"),  # noqa: E501
    case("models", "catalog, not loaded", body(model="smollm2-135m-instruct"), 404, "does not exist"),  # noqa: E501
    case("models", "unknown draft", body(draft_model="../tiny"), 404, "does not exist"),  # noqa: E501
    case("memory", "draft cache over budget", body(max_tokens=240, draft_model="tiny"), 503, "Not enough memory"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "status", "fragment", "headers"), CASES)
def test_each_case_gets_its_documented_error_and_the_server_lives_on(
    server, reference, path, raw, status, fragment, headers
):
    response = server.post(path, raw, **headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error
    if status == 503:
        assert error["code"] == "insufficient_memory" and "budget" in error["message"]
    server.assert_alive(reference)


def test_max_tokens_beyond_the_context_is_cut_to_what_is_left(server, reference):
    reply = server.chat(max_tokens=1 << 20, temperature=0).json()
    usage = reply["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 256
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    small = server.chat(max_tokens=20, draft_model="tiny", temperature=0)
    assert small.status_code == 200  # a draft cache fits when the request is small
    server.assert_alive(reference)


def test_a_good_stream_is_untouched_by_a_flood_of_bad_requests(server, reference):
    fields = {"model": "tiny", "messages": CHAT, "max_tokens": 200, "temperature": 0}
    alone = server.chat(max_tokens=200, temperature=0).json()
    expected = alone["choices"][0]["message"]["content"]
    pieces, done = [], threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json=fields | {"stream": True},
            timeout=60,
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    pieces.append(delta.get("content") or "")
        done.set()

    thread = threading.Thread(target=stream)
    thread.start()
    for path, raw, status, _, headers in (c.values for c in CASES * 2):
        assert server.post(path, raw, **headers).status_code == status
    thread.join(60)
    assert done.is_set() and "".join(pieces) == expected
    server.assert_alive(reference)
