"""The acceptance rule is exact: speculative output has the target's distribution.

Empirical frequencies of many seeded runs on tiny models, against the target's own
softmax, with a total-variation bound and a chi-square test.
"""

from __future__ import annotations

import math
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import apply_top_k

from engine.schema import SamplingParams
from engine.speculative import SpecStats, speculative_generate_step
from tests.test_speculative import PROMPT, perturbed, tiny_llama


@pytest.fixture(scope="module")
def stream() -> mx.Stream:
    return mx.default_stream(mx.default_device())


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


@pytest.mark.parametrize("draft_vocab", [0, 24])
def test_draft_model_sampling_is_exact(stream, draft_vocab):
    # The draft differs (acceptance well below 1), so rejection and residual
    # sampling both happen. The first token comes from a plain step; the second
    # from a round with one draft. With draft_vocab the draft proposes from ids
    # 0..23 only (engine/draft_head.py): q is 0 where p may not be.
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
        draft_vocab=draft_vocab,
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
