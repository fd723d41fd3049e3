"""Softmax, logsumexp and attention from engine/exp_kernels.py: MLX's results, bit for
bit, in every case the models send; MLX's own functions for the rest."""

from __future__ import annotations

import ctypes
import os

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

from engine import exp_kernels, fast_blas
from tests.test_quality import make_model

MLX_ATTENTION = exp_kernels._mlx_attention


@pytest.fixture(autouse=True)
def on(monkeypatch):
    """Take the kernels' path whether or not this process has the JIT front: the
    results must be MLX's either way (the front changes only their speed)."""
    monkeypatch.setattr(exp_kernels, "enabled", lambda: True)


def same_bits(a: mx.array, b: mx.array) -> bool:
    a, b = np.array(a), np.array(b)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def logits_like(shape, seed=0) -> mx.array:
    """Wide logits with -inf holes, as masks and processors leave them."""
    key = mx.random.key(seed)
    x = mx.random.normal(shape, key=key) * 8
    holes = mx.random.uniform(shape=shape, key=mx.random.split(key)[0]) < 0.1
    return mx.where(holes, -mx.inf, x)


@pytest.mark.parametrize(
    "shape", [(8, 49152), (3, 151936), (5, 1000), (1, 7), (8, 9, 1, 230)]
)
def test_logsumexp_and_softmax_are_mlxs_bit_for_bit(shape):
    x = logits_like(shape)
    assert same_bits(exp_kernels.logsumexp(x), mx.logsumexp(x, axis=-1, keepdims=True))
    assert same_bits(exp_kernels.softmax(x), mx.softmax(x, axis=-1, precise=True))


def test_rows_of_minus_infinity_give_what_mlx_gives():
    x = mx.array([[-mx.inf] * 5, [0.0, -mx.inf, 1.0, 2.0, -mx.inf]])
    got = exp_kernels.logsumexp(x)
    assert same_bits(got, mx.logsumexp(x, axis=-1, keepdims=True))
    assert np.array(got)[0, 0] == -np.inf


def test_other_dtypes_are_left_to_mlx():
    x = logits_like((4, 300)).astype(mx.float16)
    assert exp_kernels.logsumexp(x).dtype == mx.float16
    assert same_bits(
        exp_kernels.softmax(x).astype(mx.float32),
        mx.softmax(x, axis=-1, precise=True).astype(mx.float32),
    )


ATTENTION_CASES = {
    # name: (heads, kv_heads, q_len, k_len, mask)
    "decode": (9, 3, 1, 230, None),
    "decode, one kv head per head": (4, 4, 1, 50, None),
    "verify, causal": (12, 2, 5, 300, "causal"),
    "prefill, causal": (4, 2, 16, 16, "causal"),
    "more queries than keys": (4, 2, 6, 4, "causal"),
    "left padding": (9, 3, 1, 64, "padding"),
    "a fully masked row": (4, 2, 2, 8, "empty row"),
    "per-head additive": (4, 2, 3, 20, "additive"),
}


def attention_inputs(heads, kv_heads, q_len, k_len, mask, batch=3):
    keys = mx.random.split(mx.random.key(1), 4)
    q = mx.random.normal((batch, heads, q_len, 64), key=keys[0])
    k = mx.random.normal((batch, kv_heads, k_len, 64), key=keys[1])
    v = mx.random.normal((batch, kv_heads, k_len, 64), key=keys[2])
    if mask == "padding":
        starts = mx.array([0, 5, 17])[:, None, None, None]
        mask = mx.arange(k_len)[None, None, None] >= starts
    elif mask == "empty row":
        mask = mx.ones((batch, 1, q_len, k_len), dtype=mx.bool_)
        mask[:, :, 0, :] = False
    elif mask == "additive":
        mask = mx.random.normal((batch, heads, q_len, k_len), key=keys[3])
    return q, k, v, mask


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_is_mlxs_bit_for_bit(case):
    q, k, v, mask = attention_inputs(*ATTENTION_CASES[case])
    got = exp_kernels.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
    want = MLX_ATTENTION(q, k, v, scale=0.125, mask=mask)
    assert same_bits(got, want)


@pytest.mark.skipif(
    not os.environ.get("CI") and not fast_blas.kernel_loaded(),
    reason="needs the skinny-GEMM kernel preloaded, as `make test` does",
)
def test_a_kv_heads_group_of_queries_is_one_product_on_the_kernel():
    def calls() -> int:
        return ctypes.c_long.in_dll(ctypes.CDLL(None), fast_blas.SHIM_SYMBOL).value

    products = {}
    for q_len, mask in ((1, "padding"), (6, "causal")):  # 3 x 6 rows: too many
        q, k, v, mask = attention_inputs(9, 3, q_len, 40, mask)
        mx.eval(q, k, v)
        before = calls()
        got = exp_kernels.scaled_dot_product_attention(q, k, v, scale=0.1, mask=mask)
        mx.eval(got)
        products[q_len] = calls() - before
        assert same_bits(got, MLX_ATTENTION(q, k, v, scale=0.1, mask=mask))
    # scores and values per (sequence, KV head), or per (sequence, head)
    assert products == {1: 2 * 3 * 3, 6: 2 * 3 * 9}


def test_sinks_and_half_precision_go_to_mlx():
    q, k, v, _ = attention_inputs(4, 2, 2, 10, None)
    sinks = mx.zeros((4,))
    got = exp_kernels.scaled_dot_product_attention(q, k, v, scale=0.1, sinks=sinks)
    assert same_bits(got, MLX_ATTENTION(q, k, v, scale=0.1, sinks=sinks))
    half = [a.astype(mx.float16) for a in (q, k, v)]
    got = exp_kernels.scaled_dot_product_attention(*half, scale=0.1, mask="causal")
    assert got.dtype == mx.float16
    want = MLX_ATTENTION(*half, scale=0.1, mask="causal")
    assert same_bits(got.astype(mx.float32), want.astype(mx.float32))


def run_model(model) -> list[mx.array]:
    """Logits of a prefill, a 4-row verify, and two steps of a left-padded batch."""
    out = []
    cache = make_prompt_cache(model)
    out.append(model(mx.array([list(range(1, 40))]), cache=cache))
    out.append(model(mx.array([[5, 6, 7, 8]]), cache=cache))
    batch = [BatchKVCache([0, 3, 7]) for _ in model.layers]
    out.append(model(mx.array([list(range(10, 30))] * 3), cache=batch))
    out.append(model(mx.array([[1], [2], [3]]), cache=batch))
    return out


def test_a_model_gives_the_same_logits_with_the_kernels_installed(monkeypatch):
    model = make_model(seed=3)  # a 2-layer llama with grouped KV heads
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", MLX_ATTENTION)
    want = run_model(model)
    assert exp_kernels.install()
    assert (
        mx.fast.scaled_dot_product_attention is exp_kernels.scaled_dot_product_attention
    )
    got = run_model(model)
    assert all(same_bits(g, w) for g, w in zip(got, want, strict=True))


def test_install_needs_the_front(monkeypatch):
    monkeypatch.setattr(exp_kernels, "enabled", lambda: False)
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", MLX_ATTENTION)
    assert not exp_kernels.install()
    assert mx.fast.scaled_dot_product_attention is MLX_ATTENTION
