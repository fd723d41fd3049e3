"""Speculative decoding on tiny random llamas: greedy equality, caches, exactness."""

from __future__ import annotations

import math
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import apply_top_k

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
) -> nn.Module:
    """A random llama; ``sharpness`` scales the output layer (lower entropy),
    ``damping`` the layers' outputs (towards a bigram model)."""
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
        tie_word_embeddings=False,
    )
    model = llama.Model(args)
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
        target, PROMPT, stream, draft_model=target, num_draft_tokens=4, stats=stats
    )
    assert stats.acceptance_rate == 1.0 and stats.drafted > 0
    assert stats.tokens_per_forward > 4  # k grows from 4 towards 8
    assert sum(flags) == stats.accepted


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
    for bad in ({}, {"draft_model": draft, "lookup": True}):
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


# --- Exactness: the output distribution is the target's -----------------------


def target_probs(model: nn.Module, prefixes: list[list[int]], filters) -> np.ndarray:
    """The target's sampling distribution after each prefix, computed without cache."""
    logits = model(mx.array(prefixes))[:, -1, :].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return np.array(mx.softmax(filters(logprobs), axis=-1))


def sample_pairs(target, stream, params_for, runs: int, k: int, prompt, **method):
    """The first two tokens of ``runs`` seeded generations, and the stats."""
    stats, pairs = SpecStats(), []
    for seed in range(runs):
        steps = speculative_generate_step(
            mx.array(prompt),
            target,
            stream,
            params=params_for(seed),
            max_tokens=k + 1,
            prompt_cache=make_prompt_cache(target),
            num_draft_tokens=k,
            adaptive=False,
            stats=stats,
            **method,
        )
        pairs.append((next(steps)[0], next(steps)[0]))
        steps.close()
    return np.array(pairs), stats


def chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's test, cells with expected < 5 pooled; Wilson-Hilferty p-value."""
    assert observed[expected == 0].sum() == 0, "sampled a token of probability 0"
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat, df = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def check_matches(counts: np.ndarray, probs: np.ndarray, tv_bound: float) -> None:
    runs = counts.sum()
    tv = 0.5 * np.abs(counts / runs - probs).sum()
    assert tv < tv_bound, f"total variation {tv:.3f}"
    assert chi_square_p(counts, probs * runs) > 1e-3


def test_draft_model_sampling_is_exact(stream):
    # The draft differs (acceptance well below 1), so rejection and residual
    # sampling both happen; the second token also follows an accepted draft.
    vocab, runs = 64, 2000
    target = tiny_llama(3, vocab=vocab, sharpness=6.0, layers=1)
    draft = perturbed(target, seed=4, noise=0.3)
    pairs, stats = sample_pairs(
        target,
        stream,
        lambda seed: SamplingParams(temperature=1.0, seed=seed),
        runs,
        k=2,
        prompt=PROMPT[:1],
        draft_model=draft,
    )
    assert 0.15 < stats.acceptance_rate < 0.85
    first = target_probs(target, [PROMPT[:1]], lambda x: x)[0]
    check_matches(np.bincount(pairs[:, 0], minlength=vocab), first, 0.05)
    second = target_probs(target, [[PROMPT[0], t] for t in range(vocab)], lambda x: x)
    check_matches(np.bincount(pairs[:, 1], minlength=vocab), first @ second, 0.05)


@pytest.mark.parametrize("method", ["draft", "lookup"])
def test_filtered_sampling_is_exact_for_the_joint_of_two_tokens(stream, method):
    # top_k gives the draft and target different supports; q must be the filtered
    # draft distribution that drafts are really sampled from (one-hot for lookup,
    # which proposes 5, 3 after this prompt).
    params = SamplingParams(temperature=1.5, top_k=3)
    vocab, runs, prompt = 16, 1000, [3, 5, 3, 5, 3]
    target = tiny_llama(5, vocab=vocab, sharpness=3.0, layers=1)
    if method == "draft":
        kwargs = {"draft_model": perturbed(target, seed=6, noise=0.3)}
    else:
        kwargs = {"lookup": True}

    def filters(logprobs: mx.array) -> mx.array:
        return apply_top_k(logprobs, params.top_k) / params.temperature

    pairs, stats = sample_pairs(
        target,
        stream,
        lambda seed: replace(params, seed=seed),
        runs,
        2,
        prompt,
        **kwargs,
    )
    assert 0.1 < stats.acceptance_rate < 0.9
    first = target_probs(target, [prompt], filters)[0]
    second = target_probs(target, [[*prompt, t] for t in range(vocab)], filters)
    joint = (first[:, None] * second).ravel()  # (vocab * vocab,)
    counts = np.bincount(pairs[:, 0] * vocab + pairs[:, 1], minlength=vocab**2)
    check_matches(counts, joint, 0.08)
