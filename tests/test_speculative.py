"""Speculative decoding on tiny random llamas: greedy equality, caches, exactness."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache

from engine.draft_length import DraftCosts
from engine.sampling import to_logits_processors
from engine.schema import SamplingParams
from engine.speculative import (
    SpecStats,
    check_draft,
    speculative_generate_step,
)

PROMPT = [1, 5, 9, 3, 7, 2, 11, 4]
GREEDY = SamplingParams(temperature=0.0)


def tiny_llama(
    seed: int,
    *,
    vocab: int = 64,
    sharpness: float = 1.0,
    layers: int = 2,
    damping: float = 1.0,
    tied: bool = False,
) -> nn.Module:
    """A random llama; ``sharpness`` scales the output layer (lower entropy),
    ``damping`` the layers' outputs (towards a bigram model); ``tied``: the output
    layer is the embedding (then ``sharpness`` is not applied)."""
    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=layers,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )
    model = llama.Model(args)
    if not tied:
        model.lm_head.weight = model.lm_head.weight * sharpness
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight = layer.self_attn.o_proj.weight * damping
        layer.mlp.down_proj.weight = layer.mlp.down_proj.weight * damping
    mx.eval(model.parameters())
    return model


def perturbed(model: nn.Module, seed: int, noise: float) -> nn.Module:
    """A copy of ``model`` with noise on its output layer: a draft that differs."""
    draft = tiny_llama(
        0, vocab=model.args.vocab_size, layers=model.args.num_hidden_layers
    )
    draft.update(model.parameters())
    weight = model.lm_head.weight
    key = mx.random.key(seed)
    draft.lm_head.weight = weight + noise * mx.random.normal(weight.shape, key=key)
    mx.eval(draft.parameters())
    return draft


@pytest.fixture(scope="module")
def stream() -> mx.Stream:
    return mx.default_stream(mx.default_device())


@pytest.fixture(scope="module")
def target() -> nn.Module:
    return tiny_llama(0)


@pytest.fixture(scope="module")
def draft() -> nn.Module:
    return tiny_llama(1)


def plain_greedy(model: nn.Module, prompt: list[int], n: int, stream) -> list[int]:
    steps = generate_step(
        mx.array(prompt),
        model,
        stream,
        max_tokens=n,
        sampler=lambda logprobs: mx.argmax(logprobs, axis=-1),
        prompt_cache=make_prompt_cache(model),
    )
    return [token for token, _ in steps]


def speculate(model, prompt, stream, *, params=GREEDY, max_tokens=40, **kwargs):
    """Run to the end; return tokens, from_draft flags and the target cache."""
    cache = kwargs.pop("prompt_cache", None) or make_prompt_cache(model)
    steps = speculative_generate_step(
        mx.array(prompt),
        model,
        stream,
        params=params,
        max_tokens=max_tokens,
        prompt_cache=cache,
        **kwargs,
    )
    out = list(steps)
    return [t for t, _, _ in out], [f for _, _, f in out], cache


METHODS = {
    "draft": lambda target, draft: {"draft_model": draft},
    "self": lambda target, draft: {"draft_model": target},
    "lookup": lambda target, draft: {"lookup": True},
    "auto lookup": lambda target, draft: {"lookup": True, "auto": True},
    "lookup + draft": lambda target, draft: {"lookup": True, "draft_model": draft},
    "auto": lambda target, draft: {"lookup": True, "draft_model": draft, "auto": True},
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("k,adaptive", [(1, False), (3, False), (5, False), (2, True)])
def test_greedy_equals_plain_greedy(target, draft, stream, method, k, adaptive):
    expected = plain_greedy(target, PROMPT, 40, stream)
    kwargs = METHODS[method](target, draft)
    if "draft_model" in kwargs:
        kwargs["draft_cache"] = make_prompt_cache(kwargs["draft_model"])
    stats = SpecStats()
    tokens, _, cache = speculate(
        target,
        PROMPT,
        stream,
        num_draft_tokens=k,
        adaptive=adaptive,
        stats=stats,
        **kwargs,
    )
    assert tokens == expected
    assert stats.emitted == 40 and stats.target_forwards <= 40
    # The invariant: each cache holds exactly prompt + emitted tokens.
    assert cache[0].offset == len(PROMPT) + 40
    if "draft_cache" in kwargs:
        assert kwargs["draft_cache"][0].offset == len(PROMPT) + 40


def test_self_draft_accepts_every_draft(target, stream):
    stats = SpecStats()
    tokens, flags, _ = speculate(
        target,
        PROMPT,
        stream,
        draft_model=target,
        num_draft_tokens=4,
        adaptive=False,
        draft_p_min=0.0,
        stats=stats,
    )
    assert stats.acceptance_rate == 1.0 and stats.drafted > 0
    assert stats.tokens_per_forward > 4  # 5 a round, but the first (plain) and last
    assert sum(flags) == stats.accepted


def test_adaptive_k_weighs_draft_forwards_against_verify_rows(target, stream):
    # A draft as big as the target costs a whole forward per token: even accepting
    # everything, one draft per round is the cheapest way to emit tokens.
    stats = SpecStats()
    tokens, _, _ = speculate(
        target,
        PROMPT,
        stream,
        draft_model=target,
        num_draft_tokens=4,
        draft_p_min=0.0,
        stats=stats,
        costs=DraftCosts(row_costs=(1.0, 1.2, 1.4, 1.6, 1.8), draft_cost=1.0),
    )
    assert tokens == plain_greedy(target, PROMPT, 40, stream)
    rounds = stats.target_forwards - 1  # the first token is a plain step
    assert stats.acceptance_rate == 1.0
    assert stats.drafted == 4 + (rounds - 1)  # 4 in the first round, then k = 1


def test_an_unsure_draft_stops_the_round(target, draft, stream):
    # The random draft is never sure of a token: with p_min = 1 each round drafts
    # one token; with p_min = 0 it drafts all k. The output is the same.
    counts = {}
    for p_min in (1.0, 0.0):
        stats = SpecStats()
        tokens, _, _ = speculate(
            target,
            PROMPT,
            stream,
            draft_model=draft,
            num_draft_tokens=3,
            adaptive=False,
            draft_p_min=p_min,
            stats=stats,
        )
        counts[p_min] = stats.drafted / (stats.target_forwards - 1)
        assert tokens == plain_greedy(target, PROMPT, 40, stream)
    assert counts[1.0] <= 1.0 < 2.5 < counts[0.0]


def test_auto_drafts_less_from_a_failing_lookup(target, stream):
    # The random target often breaks from what lookup proposes: auto mode weighs
    # lookup against plain steps by tokens per cost and drafts less.
    prompt = list(range(1, 30))
    drafted = {}
    for auto in (False, True):
        stats = SpecStats()
        tokens, _, _ = speculate(
            target, prompt, stream, lookup=True, auto=auto, stats=stats
        )
        assert tokens == plain_greedy(target, prompt, 40, stream)
        drafted[auto] = stats.drafted
    assert drafted[True] < drafted[False]


def test_cached_prefix_and_penalties_match_plain_greedy(target, draft, stream):
    # Processors see only the uncached tail + output, exactly as in generate_step.
    params = SamplingParams(
        temperature=0.0, repetition_penalty=1.5, logit_bias=((3, 2.0),)
    )
    prompt = PROMPT * 2
    caches = []
    for _ in range(2):
        cache = make_prompt_cache(target)
        target(mx.array(prompt[:5])[None], cache=cache)
        caches.append(cache)
    steps = generate_step(
        mx.array(prompt[5:]),
        target,
        stream,
        max_tokens=30,
        sampler=lambda logprobs: mx.argmax(logprobs, axis=-1),
        logits_processors=to_logits_processors(params),
        prompt_cache=caches[0],
    )
    expected = [token for token, _ in steps]
    tokens, _, _ = speculate(
        target,
        prompt[5:],
        stream,
        params=params,
        max_tokens=30,
        history=prompt,
        prompt_cache=caches[1],
        draft_model=draft,
        logits_processors=to_logits_processors(params),
    )
    assert tokens == expected
    assert caches[1][0].offset == caches[0][0].offset == len(prompt) + 30


def test_closing_early_leaves_caches_at_prompt_plus_yielded(target, stream):
    expected = plain_greedy(target, PROMPT, 20, stream)
    cache, draft_cache = make_prompt_cache(target), make_prompt_cache(target)
    steps = speculative_generate_step(
        mx.array(PROMPT),
        target,
        stream,
        params=GREEDY,
        max_tokens=20,
        prompt_cache=cache,
        draft_model=target,
        draft_cache=draft_cache,
    )
    head = [next(steps)[0] for _ in range(7)]
    steps.close()
    assert cache[0].offset == draft_cache[0].offset == len(PROMPT) + 7
    # Reuse both caches as a prompt cache: the rest must continue the text.
    for c in (*cache, *draft_cache):
        c.trim(1)
    tail, _, _ = speculate(
        target,
        head[-1:],
        stream,
        max_tokens=13,
        history=PROMPT + head,
        prompt_cache=cache,
        draft_model=target,
        draft_cache=draft_cache,
    )
    assert head + tail == expected


def test_lookup_accepts_repeated_text(stream):
    # With damped layers the model is nearly a bigram model: its greedy text falls
    # into a cycle, so n-grams of the prompt predict the continuation.
    model = tiny_llama(2, damping=0.1)
    prompt = PROMPT + plain_greedy(model, PROMPT, 40, stream)
    stats = SpecStats()
    tokens, flags, _ = speculate(model, prompt, stream, lookup=True, stats=stats)
    assert tokens == plain_greedy(model, prompt, 40, stream)
    assert stats.acceptance_rate > 0.5 and stats.tokens_per_forward > 2
    assert sum(flags) == stats.accepted


def test_seeded_runs_repeat(target, draft, stream):
    def run(seed: int, index: int = 0) -> list[int]:
        params = SamplingParams(temperature=1.0, top_p=0.9, seed=seed)
        return speculate(
            target, PROMPT, stream, params=params, draft_model=draft, index=index
        )[0]

    first = run(7)
    assert first == run(7)
    assert first != run(8) and first != run(7, index=1)


def test_mismatched_vocab_or_arguments_raise(target, draft, stream):
    kwargs = {"params": GREEDY, "max_tokens": 4}
    with pytest.raises(ValueError, match="vocab size 32"):
        speculative_generate_step(
            mx.array(PROMPT),
            target,
            stream,
            prompt_cache=make_prompt_cache(target),
            draft_model=tiny_llama(2, vocab=32),
            **kwargs,
        )
    for bad in ({}, {"num_draft_tokens": 0, "lookup": True}):
        with pytest.raises(ValueError):
            speculative_generate_step(
                mx.array(PROMPT),
                target,
                stream,
                prompt_cache=make_prompt_cache(target),
                **kwargs,
                **bad,
            )

    class Tokenizer:
        def __init__(self, vocab: dict[str, int]):
            self.vocab = vocab

        def get_vocab(self) -> dict[str, int]:
            return self.vocab

    check_draft(Tokenizer({"a": 0, "b": 1}), Tokenizer({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match="vocabulary"):
        check_draft(Tokenizer({"a": 0, "b": 1}), Tokenizer({"a": 1, "b": 0}))
