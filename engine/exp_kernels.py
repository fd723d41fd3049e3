"""Softmax, logsumexp and attention with their exps in vectorized JIT kernels.

MLX's CPU kernels for ``softmax``, ``logsumexp`` and the attention fallback's softmax
take their exps one element at a time on x86 (~15 ns each: engine/jit_front.py says
why). In an 8-row SmolLM2 decode step that is ~6 ms of logsumexp over the vocabulary
and ~8 ms of attention softmax, and both grow with the rows of a batch or a verify.

The functions here compute the same thing in the same order as MLX's kernels: the row
maximum, ``exp(x - max)`` (MLX's own exp, here in a compiled kernel that the JIT front
vectorizes), the sum in index order, then ``log(sum) + max`` or ``e * (1 / sum)``. The
results are bit-identical (tests/test_exp_kernels.py), so batched, speculative and
plain decoding stay token-identical whichever of the two computes a row.

They pay off only where MLX's JIT goes through the front (``jit_front.active()``);
elsewhere, Metal included, they hand over to MLX's own functions.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from engine import fast_blas, jit_front

_exp_shifted = mx.compile(lambda x, top: mx.exp(x - top))
_scaled = mx.compile(lambda e, total: e * (1 / total))
_log_total = mx.compile(
    lambda total, top: mx.where(mx.isinf(top), top, mx.log(total) + top)
)
_mlx_attention = mx.fast.scaled_dot_product_attention


def enabled() -> bool:
    """True where the kernels here beat MLX's: the CPU, through the JIT front."""
    return jit_front.active() and mx.default_device() == mx.cpu


_kernel_loaded = functools.cache(fast_blas.kernel_loaded)


def _sum_of_exps(x: mx.array) -> tuple[mx.array, mx.array]:
    top = mx.max(x, axis=-1, keepdims=True)
    return mx.sum(_exp_shifted(x, top), axis=-1, keepdims=True), top


def logsumexp(x: mx.array) -> mx.array:
    """``mx.logsumexp(x, axis=-1, keepdims=True)``, bit for bit, for float32 ``x``."""
    if x.dtype != mx.float32 or not enabled():
        return mx.logsumexp(x, axis=-1, keepdims=True)
    return _log_total(*_sum_of_exps(x))


def softmax(x: mx.array) -> mx.array:
    """``mx.softmax(x, axis=-1, precise=True)``, bit for bit, for float32 ``x``."""
    if x.dtype != mx.float32 or not enabled():
        return mx.softmax(x, axis=-1, precise=True)
    top = mx.max(x, axis=-1, keepdims=True)
    e = _exp_shifted(x, top)
    return _scaled(e, mx.sum(e, axis=-1, keepdims=True))


def _causal(q_len: int, k_len: int) -> mx.array:
    first = k_len - q_len  # MLX 0.32 does not clamp: extra queries see no key
    return mx.arange(first, first + q_len)[:, None] >= mx.arange(k_len)[None]


def scaled_dot_product_attention(q, k, v, *, scale, mask=None, sinks=None, stream=None):
    """``mx.fast.scaled_dot_product_attention`` as MLX's CPU fallback computes it.

    Same graph as MLX's fallback (scale the queries, group them per KV head, scores,
    mask, softmax, values), with ``softmax`` from here. Cases that graph does not cover
    here (attention sinks, an explicit stream, other dtypes or mask kinds) go to MLX.
    """
    plain = sinks is None and stream is None and q.ndim == 4
    plain = plain and all(a.dtype == mx.float32 for a in (q, k, v))
    plain = plain and (mask is None or isinstance(mask, mx.array) or mask == "causal")
    if isinstance(mask, mx.array):
        plain = plain and mask.dtype in (mx.bool_, mx.float32)
    if not plain or not enabled():
        return _mlx_attention(
            q, k, v, scale=scale, mask=mask, sinks=sinks, stream=stream
        )
    batch, heads, q_len, dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    # A KV head's queries, all its group's, in one product instead of one per head: a
    # third of the calls for SmolLM2 (1.5 ms of an 8-row decode step). Same bits where
    # the kernel takes the product: it sums each row alike whatever the row count.
    merged = groups > 1 and groups * q_len <= fast_blas.KERNEL_MAX_ROWS
    merged = merged and _kernel_loaded()
    q = mx.array(scale, q.dtype) * q
    if groups > 1:
        q = q.reshape(batch, kv_heads, groups, q_len, dim)
        k, v = mx.expand_dims(k, 2), mx.expand_dims(v, 2)
    rows = (batch, kv_heads, 1, groups * q_len, -1)
    scores = (q.reshape(rows) if merged else q) @ mx.swapaxes(k, -1, -2)
    if merged:
        scores = scores.reshape(batch, kv_heads, groups, q_len, -1)
    if mask is not None:
        if isinstance(mask, str):
            mask = _causal(q_len, k.shape[-2])
        if groups > 1 and mask.ndim >= 3:
            if mask.shape[-3] == 1:
                mask = mx.expand_dims(mask, -3)
            else:
                mask = mask.reshape(
                    *mask.shape[:-3], kv_heads, groups, *mask.shape[-2:]
                )
        if mask.dtype == mx.bool_:
            # MLX fills with the lowest float, not -inf: a fully masked row averages.
            scores = mx.where(mask, scores, mx.array(mx.finfo(mx.float32).min))
        else:
            scores = scores + mask
    weights = softmax(scores)
    out = (weights.reshape(rows) if merged else weights) @ v
    return out.reshape(batch, heads, q_len, -1) if groups > 1 else out


def install() -> bool:
    """Make ``mx.fast.scaled_dot_product_attention`` the function above on this CPU.

    mlx-lm's models call it by that name, so this is the one place every architecture
    passes. Bit-identical results: the only visible change is speed. Returns whether
    it is installed; idempotent.
    """
    if not enabled():
        return False
    mx.fast.scaled_dot_product_attention = scaled_dot_product_attention
    return True
