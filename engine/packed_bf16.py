"""Linear layers that keep bfloat16 weights, multiplied by the skinny-GEMM kernel.

A decode step's products are bound by reading weights, and bfloat16 weights are half
the bytes of float32. MLX's own CPU bfloat16 product runs several times slower than
its float32 one (docs/BENCHMARKS.md), and MLX has no CPU custom kernels, so the weights
reach ``engine/native/skinny_gemm.c`` through MLX's float32 product: their bytes viewed
as float32 pairs (N x K/2), the input reshaped to match (2M x K/2), and the call marked
by ``alpha`` (``MARK``). The kernel widens each weight exactly and sums in float32 in
the order it sums float32 weights: a product equals the float32 product of the
bfloat16-rounded weights bit for bit.

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

# alpha of a marked product (skinny_gemm.c: PACKED_BF16_ALPHA): 1 + 3 ulp, a value
# no caller passes by chance. It means 1; the kernel multiplies by nothing.
MARK = 1.0 + 3 * 2.0**-23


def available() -> bool:
    """True when this process runs the kernel with bfloat16 products (the CPU fast
    path, ``engine.fast_blas``) and MLX computes on the CPU."""
    try:
        ctypes.c_long.in_dll(ctypes.CDLL(None), "silica_bf16_calls")
    except ValueError:
        return False
    return mx.default_device() == mx.cpu


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight rounded to bfloat16, read as such by the kernel.

    Only for a process where ``available()``: elsewhere MLX would compute the marked
    product as an ordinary one, on the wrong shapes.
    """

    def __init__(self, weight: mx.array, bias: mx.array | None = None) -> None:
        super().__init__()
        if weight.shape[-1] % 2:
            raise ValueError(f"PackedLinear needs an even input size: {weight.shape}")
        self.packed = weight.astype(mx.bfloat16).view(mx.float32)  # (N, K / 2)
        if bias is not None:
            self.bias = bias

    def __call__(self, x: mx.array) -> mx.array:
        lead = x.shape[:-1]
        rows = math.prod(lead)
        pairs = x.reshape(2 * rows, x.shape[-1] // 2)  # a copy unless contiguous
        bias = self.get("bias")
        c = mx.array(0.0) if bias is None else bias
        beta = 0.0 if bias is None else 1.0
        out = mx.addmm(c, pairs, self.packed.T, alpha=MARK, beta=beta)
        return out[:rows].reshape(*lead, -1)


def packed_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose decoder layers' float ``nn.Linear``s are
    ``PackedLinear``s, sharing every other array with it (embeddings, norms, the
    output layer, quantized layers); None when there is nothing to pack."""
    body = model.get("model")
    if not isinstance(body, nn.Module) or not isinstance(body.get("layers"), list):
        return None
    layers = [_packed(layer) for layer in body.layers]
    if all(new is old for new, old in zip(layers, body.layers, strict=True)):
        return None
    copy_body = copy.copy(body)  # shallow: a new dict of the same children
    copy_body["layers"] = layers
    copy_model = copy.copy(model)
    copy_model["model"] = copy_body
    return copy_model


def _packed(module: Any) -> Any:
    """``module`` itself when it holds no float ``nn.Linear``, else a shallow copy
    with each of them (at any depth) a ``PackedLinear``."""
    if type(module) is nn.Linear:
        weight = module.weight
        if weight.dtype == mx.float32 and weight.shape[-1] % 2 == 0:
            return PackedLinear(weight, module.get("bias"))
        return module
    if isinstance(module, list):
        new = [_packed(item) for item in module]
        return module if all(a is b for a, b in zip(new, module, strict=True)) else new
    if not isinstance(module, nn.Module):
        return module
    packed = {key: _packed(value) for key, value in module.items()}
    changed = {key: value for key, value in packed.items() if value is not module[key]}
    if not changed:
        return module
    new = copy.copy(module)  # shallow: a new dict of the same children
    for key, value in changed.items():
        new[key] = value
    return new
