"""Chat tab handlers driven directly against the tiny random model."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from engine import Engine, ModelPool, SamplingParams
from webui import chat_handlers as h

CONTROLS = h.ChatControls(
    model="tiny",
    system="You are terse.",
    temperature=0.0,
    top_p=1.0,
    top_k=0,
    max_tokens=12,
    seed=-1,
    stop="",
    speculation="off",
    draft=None,
)


def ask(pool, session, text, settings, **changes) -> list[h.ChatView]:
    view = h.add_user_turn(session, text)
    assert view.warning is None and view.textbox == ""
    return list(
        h.respond(pool, session, replace(CONTROLS, **changes), settings=settings)
    )


def test_answer_streams_then_shows_its_stats(pool, model, settings):
    session = h.ChatSession()
    views = ask(pool, session, "hello there", settings)
    assert len(views) > 3  # the start, several redraws, the end
    [turn] = session.turns
    assert turn.finish in ("stop", "length") and turn.model == "tiny"
    assert 0 < turn.stats.completion_tokens <= 12
    expected = model.generate(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello there"},
        ],
        SamplingParams(max_tokens=12, temperature=0),
    )
    assert turn.answer == expected.text
    messages = views[-1].messages
    assert messages[0] == {"role": "user", "content": "hello there"}
    assert (
        "tok/s" in messages[-1]["content"]
        and "to first token" in messages[-1]["content"]
    )
    assert views[-1].warning is None and session.active is None


def test_second_turn_reuses_the_prompt_cache(pool, settings):
    session = h.ChatSession()
    ask(pool, session, "hello there", settings)
    ask(pool, session, "and then?", settings)
    first, second = session.turns
    assert second.stats.cached_tokens > 0
    assert session.messages()[1] == {"role": "assistant", "content": first.answer}


def test_stop_cancels_the_engine_job(pool, settings):
    session = h.ChatSession()
    h.add_user_turn(session, "go on")
    views = h.respond(
        pool, session, replace(CONTROLS, max_tokens=200), settings=settings
    )
    next(views)
    next(views)
    assert h.stop(session) == "Stopping…"
    rest = list(views)
    turn = session.turns[0]
    assert turn.finish == "cancelled" and turn.stats.completion_tokens < 100
    assert "[cancelled]" in rest[-1].messages[-1]["content"]
    assert h.stop(session) == ""  # nothing left to stop


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "no-such-model"}, "no-such-model"),
        ({"temperature": 5.0}, "temperature"),
        ({"speculation": "draft", "draft": None}, "draft model"),
    ],
)
def test_a_request_that_cannot_start_gives_the_message_back(
    pool, settings, changes, message
):
    session = h.ChatSession()
    view = ask(pool, session, "keep me", settings, **changes)[-1]
    assert message in view.warning
    assert view.textbox == "keep me" and session.turns == []


def test_a_prompt_too_long_is_a_warning(pool, settings):
    session = h.ChatSession()
    [view] = ask(pool, session, "word " * 400, settings)
    assert "tokens" in view.warning and session.turns == []


def test_a_full_engine_queue_is_a_warning_and_recovers(tiny_model_dir, settings):
    with Engine(max_queue=1) as engine:
        pool = ModelPool(engine)
        pool.load(str(tiny_model_dir), name="tiny")
        gate = threading.Event()
        engine.worker.call(lambda models: gate.wait(10))
        time.sleep(0.2)  # the worker is inside the call; the next task fills the queue
        filler = engine.worker.call(lambda models: None)
        session = h.ChatSession()
        [view] = ask(pool, session, "hi", settings)
        assert "queue is full" in view.warning
        gate.set()
        filler.result(10)  # the queue has room again
        ask(pool, session, "hi", settings)
        assert session.turns[0].finish in ("stop", "length")


def test_speculation_reports_acceptance(pool, settings):
    session = h.ChatSession()
    plain = ask(pool, session, "hello there", settings)[-1]
    h.clear(session)
    ask(pool, session, "hello there", settings, speculation="lookup")
    assert session.turns[0].stats.acceptance_rate is not None
    h.clear(session)
    ask(pool, session, "hello there", settings, speculation="draft", draft="tiny")
    assert session.turns[0].stats.acceptance_rate == 1.0
    assert session.turns[0].answer == plain.messages[1]["content"]


def test_one_turn_at_a_time_and_no_empty_messages(pool, settings):
    session = h.ChatSession()
    assert h.add_user_turn(session, "   ").warning == "Type a message first."
    h.add_user_turn(session, "first")
    view = h.add_user_turn(session, "second")
    assert view.warning and view.textbox == "second" and len(session.turns) == 1


def test_regenerate_edit_and_clear(pool, settings):
    session = h.ChatSession()
    ask(pool, session, "hello there", settings, temperature=1.0, seed=3)
    first = session.turns[0].answer
    assert h.retry_last(session).warning is None and session.pending is not None
    list(
        h.respond(
            pool, session, replace(CONTROLS, temperature=1.0, seed=3), settings=settings
        )
    )
    assert session.turns[0].answer == first  # same seed, same answer
    view = h.edit_last(session)
    assert view.textbox == "hello there" and session.turns == []
    assert h.edit_last(session).warning and h.retry_last(session).warning
    ask(pool, session, "again", settings)
    assert h.clear(session).messages == [] and session.turns == []


def test_export_json_and_markdown(pool, settings):
    session = h.ChatSession()
    with pytest.raises(ValueError, match="empty"):
        h.export_chat(session, "", "json", directory=settings.export_dir)
    ask(pool, session, "你好", settings)
    path = h.export_chat(session, "Be brief.", "json", directory=settings.export_dir)
    body = json.loads(path.read_text(encoding="utf-8"))
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["turns"][0]["user"] == "你好"
    assert body["turns"][0]["stats"]["completion_tokens"] > 0
    markdown = h.export_chat(session, "", "md", directory=settings.export_dir)
    assert markdown.suffix == ".md" and "## You\n\n你好" in markdown.read_text(
        encoding="utf-8"
    )
    assert path.parent != markdown.parent  # each export in its own folder


def test_sessions_in_parallel_keep_their_own_answers(pool, model, settings):
    sessions = {text: h.ChatSession() for text in ("the cat", "a dog", "one two")}
    threads = [
        threading.Thread(target=ask, args=(pool, s, text, settings))
        for text, s in sessions.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for text, session in sessions.items():
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text},
        ]
        expected = model.generate(
            messages, SamplingParams(max_tokens=12, temperature=0)
        )
        assert session.turns[0].answer == expected.text
