"""Per-request samplers and logits processors built from ``SamplingParams``.

mlx-lm's samplers draw from MLX's global random state, so two interleaved requests
would disturb each other's draws. Ours carry an explicit key that is split once per
token: a seeded request gives the same tokens alone or beside others.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
)

from engine import exp_kernels
from engine.schema import SamplingParams

Sampler = Callable[[mx.array], mx.array]  # logprobs (1, vocab) -> token ids (1,)
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]  # (tokens, logits) -> logits
PENALTY_CONTEXT = 64  # recent tokens the penalties look at


Scale = Callable[[mx.array], mx.array]  # logprobs -> logits the draw is made from


def to_key(params: SamplingParams, index: int = 0) -> mx.array:
    """The random key of completion ``index``: from the seed, or a fresh one."""
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return mx.random.key((seed + index) % (1 << 64))


def to_scale(params: SamplingParams) -> Scale | None:
    """top-p, min-p and top-k filters, then temperature; ``None`` when greedy."""
    if params.temperature == 0:
        return None
    inverse_temperature = 1.0 / params.temperature

    def scale(logprobs: mx.array) -> mx.array:
        if params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p > 0.0:
            logprobs = apply_min_p(logprobs, params.min_p)
        if params.top_k > 0:
            logprobs = _top_k(logprobs, params.top_k)
        return logprobs * inverse_temperature

    return scale


def to_sampler(params: SamplingParams, *, index: int = 0) -> Sampler:
    """A sampler for completion ``index`` of a request (seeded ones are repeatable)."""
    scale = to_scale(params)
    if scale is None:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    key = to_key(params, index)

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, step_key = mx.random.split(key)
        return mx.random.categorical(scale(logprobs), key=step_key)

    return sample


def _top_k(logprobs: mx.array, k: int) -> mx.array:
    # mlx-lm refuses k >= vocab; keeping every token is what such a k means.
    return logprobs if k >= logprobs.shape[-1] else apply_top_k(logprobs, k)


def to_logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """Logit bias and repetition/presence/frequency penalties, applied by mlx-lm."""
    return make_logits_processors(
        logit_bias=dict(params.logit_bias) or None,
        repetition_penalty=(
            params.repetition_penalty if params.repetition_penalty != 1.0 else None
        ),
        repetition_context_size=PENALTY_CONTEXT,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=PENALTY_CONTEXT,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=PENALTY_CONTEXT,
    )


def normalize(
    logits: mx.array, seen: Callable[[int], mx.array], processors: list
) -> mx.array:
    """Log-softmax of each row after the processors; row j sees ``seen(j)``."""
    if processors:
        rows = []
        for j in range(logits.shape[0]):
            row = logits[j : j + 1]
            for processor in processors:
                row = processor(seen(j), row)
            rows.append(row)
        logits = mx.concatenate(rows)
    return logits - exp_kernels.logsumexp(logits)
