"""The OpenAI-compatible server, driven over HTTP by the official openai client."""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI
from starlette.testclient import TestClient

from engine import Chunk, Engine, fast_blas
from engine.loadgen import serving as serve
from engine.serve_command import add_serve_parser, parse_model_flag
from engine.server import ServerSettings, make_app

BODY_LIMIT = 1 << 16
LOCAL = "http://localhost"  # TestClient's default "testserver" fails the Host check
CHAT = [{"role": "user", "content": "hello there"}]
LONG = {"model": "tiny", "max_tokens": 240, "n": 16}  # ~12 s of work when not cancelled


@pytest.fixture(scope="module")
def base(engine, model):
    app = make_app(engine, {"tiny": model}, ServerSettings(max_body_bytes=BODY_LIMIT))
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=30)


def complete(client, **kw):
    return client.completions.create(model="tiny", prompt="The cat", **kw)


def ask_chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=CHAT, **kw)


def healthy(base):
    return httpx.get(f"{base}/health").json()


def test_models_and_health(base, client, model):
    [info] = client.models.list().data
    assert info.id == "tiny" and info.object == "model"
    assert info.model_extra["context_length"] == 256
    assert client.models.retrieve("tiny").id == "tiny"
    health = healthy(base)
    assert health.pop("blas") == fast_blas.in_use()  # what runs the matmuls
    assert health == {"status": "ok", "models": ["tiny"], "queued": 0}
    assert info.model_extra["compute_format"] == model.info.compute_format


def test_chat_matches_the_engine_and_stops_at_max_tokens(client, model):
    reply = ask_chat(client, max_tokens=8, temperature=0)
    [choice] = reply.choices
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert (
        choice.message.content == model.generate(CHAT, max_tokens=8, temperature=0).text
    )
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens == len(model.encode(CHAT))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    assert reply.usage.prompt_tokens_details.cached_tokens >= 0
    assert reply.model_extra["silica_stats"][0]["completion_tokens"] == 8
    newer = ask_chat(client, max_completion_tokens=3, temperature=0)
    assert newer.usage.completion_tokens == 3


def test_completion_in_the_issue_shape(client):
    reply = client.completions.create(
        model="tiny", prompt="The cat", max_tokens=100, n=1, stop=None, temperature=0.7
    )
    [choice] = reply.choices
    assert reply.object == "text_completion" and isinstance(choice.text, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 100


def test_streams_equal_whole_answers_and_end_with_usage(client):
    whole = ask_chat(client, max_tokens=12, temperature=0)
    usage = {"include_usage": True}
    events = list(
        ask_chat(
            client, max_tokens=12, temperature=0, stream=True, stream_options=usage
        )
    )
    assert events[0].choices[0].delta.role == "assistant"
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == whole.choices[0].message.content
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "length"
    assert events[-1].choices == [] and events[-1].usage.completion_tokens == 12
    assert all(e.usage is None for e in events[:-1])
    plain = complete(client, max_tokens=12, temperature=0)
    pieces = list(complete(client, max_tokens=12, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"
    assert all(p.usage is None for p in pieces)


def test_n_gives_indexed_choices(client):
    reply = ask_chat(client, max_tokens=5, n=2, seed=1)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 10
    ends = {}
    for event in complete(client, max_tokens=5, n=2, seed=1, stream=True):
        for c in event.choices:
            ends[c.index] = c.finish_reason or ends.get(c.index)
    assert ends == {0: "length", 1: "length"}


def test_stop_ends_the_text_before_the_stop_string(client):
    text = complete(client, max_tokens=30, temperature=0).choices[0].text
    stop = next(
        text[k : k + 2] for k in range(3, 28) if "\ufffd" not in text[k : k + 2]
    )
    expected = text[: text.index(stop)]
    for stops in (stop, ["zzz-never", stop]):
        choice = complete(client, max_tokens=30, temperature=0, stop=stops).choices[0]
        assert choice.text == expected and choice.finish_reason == "stop"


def test_seeds_reproduce_and_differ(client):
    def run(seed):
        return complete(client, max_tokens=16, temperature=1, seed=seed).choices[0].text

    assert run(7) == run(7)
    assert len({run(seed) for seed in (1, 2, 3)}) > 1


def test_logprobs_in_openai_shapes(client):
    reply = ask_chat(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)
    legacy = complete(client, max_tokens=5, temperature=0, logprobs=2).choices[0]
    lp = legacy.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    streamed = ask_chat(client, max_tokens=5, temperature=0, logprobs=True, stream=True)
    tokens = [
        t
        for e in streamed
        if e.choices[0].logprobs
        for t in e.choices[0].logprobs.content
    ]
    assert [t.token for t in tokens] == [t.token for t in content]


TOO_LONG = "hello " * 300  # over the tiny model's 256-token context


def bad(name, raw, status=400, path="completions"):
    return pytest.param(path, raw, status, id=name)


def prompt(**fields):
    return json.dumps({"model": "tiny", "prompt": "hi"} | fields)


def chat(**fields):
    return json.dumps({"model": "tiny", "messages": CHAT} | fields)


BAD_REQUESTS = [
    bad("negative max_tokens", prompt(max_tokens=-1)),
    bad("fractional max_tokens", chat(max_tokens=1.5), path="chat/completions"),
    bad("temperature NaN", prompt(temperature=float("nan"))),
    bad("temperature -Infinity", prompt(temperature=float("-inf"))),
    bad("temperature 1e999", prompt()[:-1] + ', "temperature": 1e999}'),
    bad("top_p 2", prompt(top_p=2)),
    bad("n 0", prompt(n=0)),
    bad("empty stop", prompt(stop="")),
    bad("empty stop in a list", prompt(stop=["a", ""])),
    bad("token-id prompt", prompt(prompt=[1, 2, 3])),
    bad("two prompts", prompt(prompt=["a", "b"])),
    bad("empty prompt", prompt(prompt="")),
    bad("prompt over the context", prompt(prompt=TOO_LONG)),
    bad("chat over the context", chat(messages=[{"role": "user", "content": TOO_LONG}]), path="chat/completions"),  # noqa: E501
    bad("logit_bias word key", prompt(logit_bias={"x": 1})),
    bad("logit_bias beyond vocab", prompt(logit_bias={"9999": 1})),
    bad("stream not bool", prompt(stream="yes")),
    bad("echo", prompt(echo=True)),
    bad("unknown model", prompt(model="nope"), status=404),
    bad("malformed JSON", '{"model": "tiny", "prompt": '),
    bad("not an object", "[1, 2]"),
    bad("no messages", chat(messages=None), path="chat/completions"),
    bad("message without role", chat(messages=[{"content": "x"}]), path="chat/completions"),  # noqa: E501
    bad("top_logprobs alone", chat(top_logprobs=2), path="chat/completions"),
    bad("image content", chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), path="chat/completions"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "status"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    base, path, raw, status
):
    response = httpx.post(f"{base}/v1/{path}", content=raw.encode())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and set(error) == {
        "message", "type", "param", "code"
    }  # fmt: skip
    assert healthy(base)["status"] == "ok"


def test_oversize_bodies_get_413_with_or_without_content_length(base):
    body = json.dumps({"model": "tiny", "prompt": "x" * BODY_LIMIT}).encode()
    response = httpx.post(f"{base}/v1/completions", content=body)
    assert response.status_code == 413 and response.json()["error"]["message"]

    def chunked():
        yield from (body[i : i + 4096] for i in range(0, len(body), 4096))

    assert httpx.post(f"{base}/v1/completions", content=chunked()).status_code == 413
    assert healthy(base)["status"] == "ok"


def test_api_key_is_required_when_set(engine, model):
    app = make_app(engine, {"tiny": model}, ServerSettings(api_key="secret"))
    with TestClient(app, base_url=LOCAL) as http:
        assert http.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = http.get("/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert http.post("/v1/completions", headers=headers).status_code == 401
        good = {"Authorization": "Bearer secret"}
        assert http.get("/v1/models", headers=good).status_code == 200
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        reply = http.post("/v1/completions", json=body, headers=good).json()
        assert reply["usage"]["completion_tokens"] == 2


class FailingModel:
    """Stands in for ``Model``: its generations fail after one piece of text."""

    def stream(self, prompt, params, *, draft=None, speculation=None):
        return FailingStream(
            [Chunk("a"), Chunk("", finish_reason="error", error="boom")]
        )


class FailingStream(list):
    cancel = list.clear  # a cancelled stream yields nothing more


def test_engine_failures_become_openai_errors(engine):
    app = make_app(engine, {"tiny": FailingModel()})
    with TestClient(app, base_url=LOCAL) as http:
        body = {"model": "tiny", "prompt": "hi"}
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 500
        events = http.post("/v1/completions", json=body | {"stream": True}).text
        last = json.loads(events.strip().split("\n\n")[-1][len("data: ") :])
        for error in (response.json()["error"], last["error"]):
            assert error["type"] == "server_error" and "boom" in error["message"]
        assert http.get("/health").json()["status"] == "ok"


def hold(engine) -> threading.Event:
    """Block the engine worker until the returned event is set."""
    entered, gate = threading.Event(), threading.Event()
    engine.worker.call(lambda models: entered.set() or gate.wait(10))
    assert entered.wait(10)
    return gate


def test_a_full_queue_gives_503_with_retry_after(tiny_model_dir):
    with Engine(max_queue=1) as engine:
        model = engine.load(str(tiny_model_dir), name="tiny")
        gate = hold(engine)
        waiting = model.stream("hi", max_tokens=1)  # fills the one queue slot
        with TestClient(make_app(engine, {"tiny": model}), base_url=LOCAL) as http:
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
            response = http.post("/v1/completions", json=body)
            gate.set()
            assert response.status_code == 503 and response.headers["Retry-After"]
            assert response.json()["error"]["type"] == "server_error"
            assert list(waiting)[-1].finish_reason == "length"
            assert http.post("/v1/completions", json=body).status_code == 200


def assert_engine_is_free(base, client):
    started = time.monotonic()
    reply = complete(client, max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4
    assert time.monotonic() - started < 4, "the abandoned generation kept running"
    assert healthy(base)["queued"] == 0


def test_a_disconnecting_stream_cancels_its_generation(base, client):
    body = LONG | {"prompt": "The cat", "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data:"))
    assert_engine_is_free(base, client)


def test_a_disconnecting_non_streaming_client_cancels(base, client):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/completions", json=LONG | {"prompt": "x"}, timeout=0.5)
    assert_engine_is_free(base, client)


def test_a_stream_that_disconnects_while_queued_never_runs(base, client, engine):
    gate = hold(engine)
    body = LONG | {"messages": CHAT, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data:"))
    assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
    time.sleep(0.5)  # the server notices the disconnect while the job is queued
    gate.set()
    assert_engine_is_free(base, client)


def test_concurrent_clients_each_get_their_own_answer(client):
    prompts = ["The cat", "Once upon", "hello there", "a b c d"]

    def ask(prompt):
        reply = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=20, temperature=0
        )
        return reply.choices[0].text, reply.usage.completion_tokens

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts) * 2) as pool:
        together = list(pool.map(ask, prompts * 2))
    assert together == alone * 2


def test_serve_flags(tmp_path):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "a", "--model", "b=./x"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8080, ["a", "b=./x"])
    assert args.func.__name__ == "run_serve"
    assert parse_model_flag("coder=qwen-0.5b") == ("coder", "qwen-0.5b")
    gguf = tmp_path / "m.gguf"
    gguf.touch()
    assert parse_model_flag(str(gguf)) == ("m", str(gguf))
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "0"])
