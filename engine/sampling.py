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

from engine.schema import SamplingParams

Sampler = Callable[[mx.array], mx.array]  # logprobs (1, vocab) -> token ids (1,)
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]  # (tokens, logits) -> logits
PENALTY_CONTEXT = 64  # recent tokens the penalties look at


def to_sampler(params: SamplingParams, *, index: int = 0) -> Sampler:
    """A sampler for completion ``index`` of a request (seeded ones are repeatable)."""
    if params.temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    key = mx.random.key((seed + index) % (1 << 64))
    vocab_filters = []
    if params.top_p < 1.0:
        vocab_filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0.0:
        vocab_filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        vocab_filters.append(lambda x: _top_k(x, params.top_k))
    inverse_temperature = 1.0 / params.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, step_key = mx.random.split(key)
        for keep in vocab_filters:
            logprobs = keep(logprobs)
        return mx.random.categorical(logprobs * inverse_temperature, key=step_key)

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
