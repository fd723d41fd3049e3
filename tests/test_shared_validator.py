"""The web UI and the Python API refuse what the HTTP API refuses: one rule each."""

from __future__ import annotations

import math

import pytest

from engine import ModelPool, SamplingParams
from engine.openai_schema import ApiError, parse_chat
from webui import chat_handlers as h
from webui.generation import to_params
from webui.settings import UISettings

CONTROLS = {
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "max_tokens": 8,
    "seed": -1,
    "stop": "",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": math.nan}, "temperature must be between"),
        ({"top_p": math.inf}, "top_p must be between"),
        ({"max_tokens": 0}, "max_tokens must be between"),
        ({"stop": "\udfff"}, "lone surrogate"),
        ({"stop": "x" * 257}, "1 to 256 characters"),
    ],
)
def test_ui_controls_and_api_bodies_fail_the_same_check(change, message):
    with pytest.raises(ValueError, match=message):
        to_params(**(CONTROLS | change))
    field = "stop" if "stop" in change else next(iter(change))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ApiError, match=message):
        parse_chat(body | {field: change[field]})


@pytest.mark.parametrize(
    "prompt",
    ["hi \ud800", [{"role": "user", "content": "hi \udc00"}], [{"role": "\ud800"}]],
)
def test_the_engine_refuses_lone_surrogates_in_prompts(model, prompt):
    with pytest.raises(ValueError, match="lone surrogate"):
        model.stream(prompt, SamplingParams(max_tokens=2))


def test_a_ui_prompt_with_a_lone_surrogate_is_a_warning(engine, model, tmp_path):
    pool = ModelPool(engine, {"tiny": model})
    settings = UISettings(
        default_model="tiny", arena_db=tmp_path / "a.db", export_dir=tmp_path / "x"
    )
    session = h.ChatSession()
    h.add_user_turn(session, "hello \ud800")
    controls = h.ChatControls(
        model="tiny", system="", speculation="off", draft=None, **CONTROLS
    )
    views = list(h.respond(pool, session, controls, settings=settings))
    assert "lone surrogate" in views[-1].warning and session.turns == []
