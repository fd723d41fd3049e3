"""The exact speculative-sampling acceptance rule (Leviathan et al., 2023).

Draft ``d`` is accepted with probability ``min(1, p(d) / q(d))``; at the first
rejection the target samples from ``normalize(max(0, p - q))``; after k acceptances it
samples a bonus token from ``p``. The result has exactly the target's distribution.
"""

from __future__ import annotations

import mlx.core as mx

from engine.sampling import Scale


def accept_drafts(
    logprobs: mx.array,
    drafts: list[int],
    q: mx.array | None,
    scale: Scale | None,
    keys: mx.array | None,
) -> tuple[int, int]:
    """How many drafts the target accepts, and the token it samples after them.

    ``logprobs`` (k + 1, V) are the target's; ``q`` (k, V) the draft's sampling
    distributions (None: one-hot at the drafts, as for lookup).
    """
    k = len(drafts)
    if scale is None:  # greedy: p and q are one-hot at their argmax
        best = mx.argmax(logprobs, axis=-1).tolist()
        n = next((i for i in range(k) if drafts[i] != best[i]), k)
        return n, best[n]
    p = mx.softmax(scale(logprobs), axis=-1)  # (k + 1, V)
    if k == 0:
        return 0, mx.random.categorical(mx.log(p[0]), key=keys[1]).item()
    d = mx.array(drafts, mx.int32)
    if q is None:
        q = (mx.arange(p.shape[-1])[None] == d[:, None]).astype(p.dtype)  # (k, V)
    rows = mx.arange(k)
    ok = mx.random.uniform(key=keys[k], shape=(k,)) * q[rows, d] < p[rows, d]
    n = mx.cumprod(ok.astype(mx.int32)).sum()
    # Row i < k: the residual after rejecting d(i+1); row k: the bonus distribution.
    residual = mx.concatenate([mx.maximum(p[:k] - q, 0.0), p[k:]])
    residual = mx.where(residual.sum(axis=-1, keepdims=True) > 0, residual, p)
    picks = mx.random.categorical(mx.log(residual), key=keys[k + 1])  # (k + 1,)
    mx.eval(n, picks)
    return n.item(), picks[n].item()
