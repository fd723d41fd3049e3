"""The Python API on a tiny random model: equality with mlx-lm, seeds, stops, cancel."""

from __future__ import annotations

import threading
import time

import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from engine import Engine, EngineBusy, SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0)
MESSAGES = [{"role": "user", "content": "hello there"}]


def test_info_describes_the_model(model):
    assert model.info.context_length == 256
    assert model.info.has_chat_template
    assert model.info.parameters > 10_000 and model.info.memory_gb > 0


@pytest.mark.parametrize("prompt", ["the cat sat", MESSAGES])
def test_greedy_matches_mlx_lm_token_for_token(model, tiny_model_dir, prompt):
    from mlx_lm.utils import load

    ours = model.generate(prompt, GREEDY)
    mlx_model, tokenizer = load(str(tiny_model_dir))
    tokens = model.encode(prompt)
    theirs = [
        r.token
        for r in stream_generate(
            mlx_model, tokenizer, tokens, max_tokens=24, sampler=make_sampler(0.0)
        )
    ]
    assert list(ours.choices[0].tokens) == [
        t for t in theirs if t not in tokenizer.eos_token_ids
    ]


def test_seed_gives_the_same_output_and_n_gives_distinct_choices(model):
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, n=2)
    first, second = model.generate("abc", params), model.generate("abc", params)
    assert [c.tokens for c in first.choices] == [c.tokens for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert first.choices[0].tokens != first.choices[1].tokens
    other = model.generate("abc", SamplingParams(max_tokens=16, seed=99))
    assert other.choices[0].tokens != first.choices[0].tokens


def test_stop_string_ends_and_is_never_emitted(model):
    text = model.generate("xyz", GREEDY).text
    stop = text[5:8]
    assert stop, text
    pieces = [
        c.text
        for c in model.stream(
            "xyz", SamplingParams(**{**vars(GREEDY), "stop": (stop,)})
        )
    ]
    joined = "".join(pieces)
    assert joined == text[: text.find(stop)]
    assert all(stop not in p for p in pieces)


def test_cancel_from_another_thread_stops_at_once(model):
    stream = model.stream("go", SamplingParams(max_tokens=240, temperature=1.0, seed=3))
    first = next(stream)
    assert first.finish_reason is None
    threading.Thread(target=stream.cancel).start()
    start = time.monotonic()
    rest = list(stream)
    assert time.monotonic() - start < 2.0
    assert rest[-1].finish_reason == "cancelled"
    assert rest[-1].stats.completion_tokens < 240
    assert model.generate("ok", SamplingParams(max_tokens=3, temperature=0)).choices


def test_second_turn_reuses_the_prompt_cache_with_identical_output(
    model, tiny_model_dir
):
    turn1 = model.generate(MESSAGES, GREEDY)
    history = [
        *MESSAGES,
        {"role": "assistant", "content": turn1.text},
        {"role": "user", "content": "and then?"},
    ]
    warm = model.generate(history, GREEDY)
    assert warm.usage.cached_tokens > len(model.encode(MESSAGES)) // 2
    with Engine() as cold_engine:
        cold = cold_engine.load(str(tiny_model_dir)).generate(history, GREEDY)
    assert cold.usage.cached_tokens == 0
    assert warm.choices[0].tokens == cold.choices[0].tokens


def test_prompt_longer_than_context_is_refused_and_max_tokens_clamped(model):
    with pytest.raises(ValueError, match="at most 255"):
        model.generate("a" * 400, GREEDY)
    near_end = model.generate("b" * 250, SamplingParams(max_tokens=100, temperature=0))
    assert near_end.usage.prompt_tokens + near_end.usage.completion_tokens <= 256


def test_logprobs_and_top_logprobs(model):
    params = SamplingParams(max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    choice = model.generate("hi", params).choices[0]
    assert len(choice.logprobs) == len(choice.tokens) > 0
    for lp in choice.logprobs:
        assert len(lp.top) == 3
        assert [t[2] for t in lp.top] == sorted((t[2] for t in lp.top), reverse=True)
        assert lp.top[0][0] == lp.token and lp.logprob <= 0


def test_full_queue_is_refused_then_recovers(tiny_model_dir):
    with Engine(max_queue=1) as engine:
        model = engine.load(str(tiny_model_dir))
        gate = threading.Event()
        engine.worker.call(lambda models: gate.wait(10))
        time.sleep(0.2)  # the worker is now inside the call
        waiting = model.stream("a", GREEDY)
        with pytest.raises(EngineBusy, match="queue is full"):
            model.stream("b", GREEDY)
        gate.set()
        assert list(waiting)[-1].finish_reason in ("stop", "length")


def test_worker_error_ends_only_that_request(engine, model):
    from engine.worker import GenerateRequest

    job = engine.worker.generate(GenerateRequest("no-such-model", (1, 2), GREEDY))
    chunks = []
    while (chunk := job.out.get(timeout=10)) is not None:
        chunks.append(chunk)
    assert chunks[-1].finish_reason == "error" and "no-such-model" in chunks[-1].error
    assert model.generate("still fine", GREEDY).choices[0].finish_reason


def test_empty_prompt_is_a_value_error(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate("", GREEDY)


def test_speculation_keeps_greedy_output_and_reports_acceptance(
    engine, model, tiny_model_dir
):
    plain = model.generate(MESSAGES, GREEDY)
    lookup = model.generate(MESSAGES, GREEDY, speculation="lookup")
    assert lookup.choices[0].tokens == plain.choices[0].tokens
    assert 0.0 <= lookup.stats[0].acceptance_rate <= 1.0
    draft = engine.load(str(tiny_model_dir), name="tiny-draft")
    drafted = model.generate(MESSAGES, GREEDY, draft=draft)
    assert drafted.choices[0].tokens == plain.choices[0].tokens
    assert drafted.stats[0].acceptance_rate == 1.0  # the same weights agree everywhere
    assert drafted.stats[0].tokens_per_forward > 1.5
    assert drafted.stats[0].draft_s > 0 and drafted.stats[0].verify_s > 0
    for spec in ({"speculation": "auto"}, {"speculation": "auto", "draft": draft}):
        auto = model.generate(MESSAGES, GREEDY, **spec)
        assert auto.choices[0].tokens == plain.choices[0].tokens, spec
        assert auto.stats[0].tokens_per_forward >= 1.0
    with pytest.raises(ValueError, match="takes no draft"):
        model.generate(MESSAGES, GREEDY, draft=draft, speculation="lookup")
    assert plain.stats[0].acceptance_rate is None
    assert plain.stats[0].draft_s is None


def test_bad_speculation_requests_are_refused(model, tiny_model_dir):
    with pytest.raises(ValueError, match="'lookup', 'draft' or 'auto'"):
        model.generate("x", GREEDY, speculation="auto-magic")
    with pytest.raises(ValueError, match="needs draft"):
        model.generate("x", GREEDY, speculation="draft")
    with Engine() as other:
        stranger = other.load(str(tiny_model_dir))
        with pytest.raises(ValueError, match="same Engine"):
            model.generate("x", GREEDY, draft=stranger)
