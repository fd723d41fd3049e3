"""More of `silica serve`: speculation fields, and the real SmolLM2 over HTTP."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from engine.runtime import Engine
from engine.server import make_app
from tests.test_server import serve


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    with Engine() as engine:
        models = {
            "tiny": engine.load(str(tiny_model_dir), name="tiny"),
            "tiny-draft": engine.load(str(tiny_model_dir), name="tiny-draft"),
        }
        with serve(make_app(engine, models)) as url:
            yield url


@pytest.mark.slow
def test_real_model_answers_paris_over_streaming_chat():
    with Engine() as engine:
        model = engine.load("smollm2-135m-instruct")
        with serve(make_app(engine, {model.name: model})) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            question = [{"role": "user", "content": "What is the capital of France?"}]
            stream = client.chat.completions.create(
                model=model.name,
                messages=question,
                max_tokens=30,
                temperature=0,
                stream=True,
            )
            text = "".join(e.choices[0].delta.content or "" for e in stream)
    assert "Paris" in text


def test_speculation_fields_keep_greedy_text(base):
    body = {"model": "tiny", "prompt": "The cat", "max_tokens": 12, "temperature": 0}
    url = f"{base}/v1/completions"
    plain = httpx.post(url, json=body).json()["choices"][0]["text"]
    for extra in (
        {"speculation": "lookup"},
        {"draft_model": "tiny-draft"},
        {"speculation": "auto"},
        {"speculation": "auto", "draft_model": "tiny-draft"},
    ):
        reply = httpx.post(url, json=body | extra).json()
        assert reply["choices"][0]["text"] == plain, extra
        assert reply["silica_stats"][0]["acceptance_rate"] is not None


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"speculation": "guess"}, 400),
        ({"speculation": "draft"}, 400),
        ({"speculation": "lookup", "draft_model": "tiny-draft"}, 400),
        ({"draft_model": "nope"}, 404),
    ],
)
def test_bad_speculation_fields(base, extra, status):
    body = {"model": "tiny", "prompt": "The cat", "max_tokens": 4} | extra
    response = httpx.post(f"{base}/v1/completions", json=body)
    assert response.status_code == status and "error" in response.json()
