"""A draft's output layer cut to a subset: same logits there, -inf elsewhere, exact."""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from engine import int8_linear
from engine.bench import WORKLOADS
from engine.draft_head import ReducedHead, reduced_head
from engine.speculative import SpecStats
from tests.test_speculative import GREEDY, PROMPT, plain_greedy, speculate, tiny_llama

VOCAB, SIZE = 64, 16
# `make test` runs pytest with the kernel preloaded: under CI this runs (and fails).
KERNEL_IN_PROCESS = pytest.mark.skipif(
    not os.environ.get("CI") and not int8_linear.available(),
    reason="pytest without the CPU fast path preloaded (run it with `make test`)",
)


@pytest.fixture(scope="module")
def stream() -> mx.Stream:
    return mx.default_stream(mx.default_device())


def full_and_reduced(model: nn.Module, head: ReducedHead, tokens: list[int]):
    """Logits (L, vocab) of the model and of ``head`` for ``tokens``, fresh caches."""
    inputs = mx.array(tokens)[None]
    full = model(inputs, cache=make_prompt_cache(model))[0]
    reduced = head(inputs, cache=make_prompt_cache(model))[0]
    return np.array(full), np.array(reduced)


def test_only_a_large_plain_head_is_cut():
    model = tiny_llama(0, vocab=VOCAB)
    assert isinstance(reduced_head(model, PROMPT, SIZE), ReducedHead)
    assert reduced_head(model, PROMPT, 0) is model
    assert reduced_head(model, PROMPT, VOCAB // 2 + 1) is model  # would not pay
    capped = tiny_llama(0, vocab=VOCAB)
    capped.args.model_type = "gemma2"  # soft-caps its logits after the head
    assert reduced_head(capped, PROMPT, SIZE) is capped


@pytest.mark.parametrize("quantized", [False, True])
def test_kept_ids_have_the_model_logits_and_the_rest_minus_inf(quantized):
    model = tiny_llama(0, vocab=VOCAB)
    if quantized:
        nn.quantize(model, group_size=32, bits=4)
    prompt = [3, 40, 9, 57]  # 40 and 57 lie beyond the first SIZE ids
    head = ReducedHead(model, prompt, SIZE)
    full, reduced = full_and_reduced(model, head, prompt)
    kept = sorted(set(range(SIZE)) | {40, 57})
    np.testing.assert_allclose(reduced[:, kept], full[:, kept], rtol=1e-4, atol=1e-4)
    dropped = np.setdiff1d(np.arange(VOCAB), kept)
    assert np.all(np.isneginf(reduced[:, dropped]))


@KERNEL_IN_PROCESS
def test_an_int8_draft_proposes_from_its_int8_output_rows():
    int8 = int8_linear.int8_copy(tiny_llama(0, vocab=VOCAB))
    head = ReducedHead(int8, [1, 2], SIZE)
    assert "packed" in head.first  # rows of the draft's own int8 layer, not converted
    inputs = mx.array([[3, 9, 5]])
    full = np.array(int8(inputs, cache=make_prompt_cache(int8)))[0]
    got = np.array(head(inputs, cache=make_prompt_cache(int8)))[0]
    # the kernel sums an output the same way whichever rows are asked for
    np.testing.assert_array_equal(got[:, :SIZE], full[:, :SIZE])


def test_tokens_fed_later_join_and_a_text_beyond_the_subset_turns_it_off():
    model = tiny_llama(0, vocab=VOCAB)
    head = ReducedHead(model, PROMPT, SIZE)
    head(mx.array([[50]]), cache=make_prompt_cache(model))
    assert 50 in head.extra and head.active
    full, reduced = full_and_reduced(model, head, [1, 50])
    np.testing.assert_allclose(reduced[:, 50], full[:, 50], rtol=1e-4, atol=1e-4)
    beyond = list(range(SIZE, VOCAB))  # every token outside the first SIZE ids
    head(mx.array([beyond[:6]]), cache=make_prompt_cache(model))
    assert not head.active
    full, reduced = full_and_reduced(model, head, [2, 60])
    np.testing.assert_array_equal(reduced, full)


def test_greedy_speculation_with_a_cut_draft_equals_plain_greedy(stream):
    target, draft = tiny_llama(0, vocab=VOCAB), tiny_llama(1, vocab=VOCAB)
    expected = plain_greedy(target, PROMPT, 40, stream)
    for draft_model in (draft, target):  # a different draft, and the target itself
        tokens, _, _ = speculate(
            target,
            PROMPT,
            stream,
            params=GREEDY,
            draft_model=draft_model,
            draft_vocab=SIZE,
        )
        assert tokens == expected


def test_a_prompt_mostly_beyond_the_subset_keeps_the_whole_head():
    model = tiny_llama(0, vocab=VOCAB)
    # Mostly ids past SIZE, each new: Chinese text in a Qwen vocabulary looks so.
    assert reduced_head(model, [1, 2] + list(range(40, 50)), SIZE) is model
    # The same ids repeated are known after their first time.
    assert isinstance(reduced_head(model, [1, 2] + [40, 41] * 6, SIZE), ReducedHead)


@pytest.mark.slow
def test_real_draft_with_a_cut_head_keeps_greedy_output(qwen05_dir, stream):
    # Qwen2.5-Coder-0.5B (152k-token vocabulary) drafting for itself from its first
    # 49152 ids: greedy output must not move. A Chinese prompt keeps the whole head.
    model, tokenizer = load(str(qwen05_dir))
    prompt = tokenizer.apply_chat_template(
        WORKLOADS["code"], add_generation_prompt=True
    )
    assert isinstance(reduced_head(model, prompt), ReducedHead)
    expected = plain_greedy(model, prompt, 24, stream)
    stats = SpecStats()
    tokens, _, _ = speculate(
        model, prompt, stream, draft_model=model, max_tokens=24, stats=stats
    )
    assert tokens == expected
    assert stats.acceptance_rate > 0.8
    chinese = WORKLOADS["chinese"]
    assert reduced_head(model, tokenizer.apply_chat_template(chinese)) is model
