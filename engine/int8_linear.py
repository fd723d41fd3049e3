"""Linear layers with int8 weights and a scale per row, for the skinny-GEMM kernel.

A decode step's products are bound by reading weights, and int8 weights are a quarter
of the bytes of float32. MLX's own CPU quantized products run several times slower
than its float32 ones (docs/BENCHMARKS.md), and MLX has no CPU custom kernels, so the
weights reach ``engine/native/skinny_gemm.c`` through MLX's float32 product ``addmm``:
their bytes viewed as float32 slots (N x K/4), the input reshaped to match (4M x K/4),
each row's scale in ``c`` and the call marked by ``alpha`` (``MARK``). The kernel
widens each weight exactly, sums in float32 and multiplies the sum by the row's scale.

Used for draft models on the CPU fast path: the target verifies every proposal, so a
narrower draft changes how many tokens are accepted, never the output.
"""

from __future__ import annotations

import copy
import ctypes
import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

# alpha of a marked product (skinny_gemm.c: INT8_ALPHA): 1 + 5 ulp, a value no caller
# passes by chance.
MARK = 1.0 + 5 * 2.0**-23


def available() -> bool:
    """True when this process runs the kernel with int8 products (the CPU fast path,
    ``engine.fast_blas``) and MLX computes on the CPU."""
    try:
        ctypes.c_long.in_dll(ctypes.CDLL(None), "silica_int8_calls")
    except ValueError:
        return False
    return mx.default_device() == mx.cpu


def quantize_rows(weight: mx.array) -> tuple[mx.array, mx.array]:
    """``weight`` (N, K) as int8 rows viewed as float32 slots (N, K/4), and the
    scales (N,) that make ``int8 * scale`` the closest to each row (symmetric:
    scale = the row's largest magnitude / 127)."""
    if weight.shape[-1] % 4:
        raise ValueError(f"int8 rows need a length divisible by 4: {weight.shape}")
    scales = mx.abs(weight).max(axis=-1) / 127
    scales = mx.where(scales > 0, scales, 1.0)
    q = mx.round(weight / scales[:, None]).astype(mx.int8)
    return q.view(mx.float32), scales


def int8_product(x: mx.array, packed: mx.array, scales: mx.array) -> mx.array:
    """``x`` (..., K) times the int8 rows ``packed`` (N, K/4 slots) with ``scales``
    (N,), transposed: (..., N), on the kernel."""
    lead = x.shape[:-1]
    rows = math.prod(lead)
    slots = x.reshape(4 * rows, x.shape[-1] // 4)  # a copy unless contiguous
    out = mx.addmm(scales, slots, packed.T, alpha=MARK)[:rows]
    return out.reshape(*lead, -1)


class Int8Linear(nn.Module):
    """``nn.Linear`` with its weight rounded to int8 per row (``quantize_rows``), read
    as such by the kernel.

    Only for a process where ``available()``: elsewhere MLX would compute the marked
    product as an ordinary one, on the wrong shapes.
    """

    def __init__(self, weight: mx.array, bias: mx.array | None = None) -> None:
        super().__init__()
        self.packed, self.scales = quantize_rows(weight)
        if bias is not None:
            self.bias = bias

    def __call__(self, x: mx.array) -> mx.array:
        out = int8_product(x, self.packed, self.scales)
        return out + self.bias if "bias" in self else out


class Int8Embedding(nn.Module):
    """``nn.Embedding`` whose ``as_linear`` (an output layer tied to it) reads its rows
    as int8; looking tokens up reads the float32 rows."""

    def __init__(self, weight: mx.array) -> None:
        super().__init__()
        self.weight = weight
        self.packed, self.scales = quantize_rows(weight)

    def __call__(self, x: mx.array) -> mx.array:
        return self.weight[x]

    def as_linear(self, x: mx.array) -> mx.array:
        return int8_product(x, self.packed, self.scales)


def int8_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose decoder layers' float32 ``nn.Linear``s are
    ``Int8Linear``s and whose output layer (or the embedding tied to it) reads int8
    rows, sharing every other array with it (the embedding's rows for lookups, norms,
    quantized layers); None when its layers have nothing to convert or ``model`` is a
    wrapper, not a module (a sharded model's ``LockstepModel`` must run as it is)."""
    if not isinstance(model, nn.Module):
        return None
    body = model.get("model")
    if not isinstance(body, nn.Module) or not isinstance(body.get("layers"), list):
        return None
    layers = [_converted(layer) for layer in body.layers]
    if all(new is old for new, old in zip(layers, body.layers, strict=True)):
        return None
    copy_body = copy.copy(body)  # shallow: a new dict of the same children
    copy_body["layers"] = layers
    copy_model = copy.copy(model)
    copy_model["model"] = copy_body
    if "lm_head" in model:
        copy_model["lm_head"] = _converted(model.lm_head)
    elif type(body.get("embed_tokens")) is nn.Embedding and _fits(body.embed_tokens):
        copy_body["embed_tokens"] = Int8Embedding(body.embed_tokens.weight)
    return copy_model


def _fits(layer: nn.Module) -> bool:
    weight = layer.weight
    return weight.dtype == mx.float32 and weight.shape[-1] % 4 == 0


def _converted(module: Any) -> Any:
    """``module`` itself when it holds no float32 ``nn.Linear``, else a shallow copy
    with each of them (at any depth) an ``Int8Linear``."""
    if type(module) is nn.Linear:
        fits = _fits(module)
        return Int8Linear(module.weight, module.get("bias")) if fits else module
    if isinstance(module, list):
        new = [_converted(item) for item in module]
        return module if all(a is b for a, b in zip(new, module, strict=True)) else new
    if not isinstance(module, nn.Module):
        return module
    converted = {key: _converted(value) for key, value in module.items()}
    changed = {k: v for k, v in converted.items() if v is not module[k]}
    if not changed:
        return module
    new = copy.copy(module)  # shallow: a new dict of the same children
    for key, value in changed.items():
        new[key] = value
    return new
