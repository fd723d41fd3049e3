"""Pick the format a model computes in: the fastest for this backend that fits.

A smaller format is not always a faster one. On Metal, 4-bit weights halve the bytes
each decode step reads, and decode is bound by reading weights. On MLX's CPU backend
the quantized and half-precision kernels run several times slower than float32 matrix
products on OpenBLAS and the skinny-GEMM kernel (engine/fast_blas.py), so a 4-bit file
decodes faster dequantized. Which way it goes is measured once per machine (a
matrix-vector product in each format, a second or two) and cached; a model is then
widened to float32 when that is faster and its float32 weights fit the memory budget.
Runs on the engine worker thread (it touches MLX).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from convert import dequantize_model
from engine import machine_table

COMPUTE_FORMATS = ("auto", "stored", "float32")
MEASURED = ("float32", "float16", "bfloat16", "8-bit", "4-bit")
SHAPE = (2048, 2048)  # outputs x inputs of the measured product (16 MB in float32)
REPEATS = 12
MEASURE_VERSION = 1


@dataclass(frozen=True)
class FormatChoice:
    """The format a model computes in, the one it was stored in, and why."""

    compute: str
    stored: str
    reason: str


def check_compute_format(value: str) -> None:
    """Raises ValueError unless ``value`` is one of ``COMPUTE_FORMATS``."""
    if value not in COMPUTE_FORMATS:
        raise ValueError(
            f"compute_format must be one of {', '.join(COMPUTE_FORMATS)}, "
            f"got {value!r}."
        )


def stored_format(model: nn.Module) -> str:
    """``"4-bit"``/``"8-bit"``... for quantized models, else the weights' dtype name."""
    bits = {m.bits for _, m in model.named_modules() if hasattr(m, "bits")}
    if bits:
        return "/".join(f"{b}-bit" for b in sorted(bits))
    counts = Counter(
        v.dtype
        for _, v in tree_flatten(model.parameters())
        if mx.issubdtype(v.dtype, mx.floating)
    )
    dtype = counts.most_common(1)[0][0] if counts else mx.float32
    return str(dtype).removeprefix("mlx.core.")


def choose(
    requested: str, stored: str, seconds: dict[str, float], widen_bytes: int, room: int
) -> FormatChoice:
    """Decide between the stored format and float32.

    Args:
        requested: ``auto``, ``stored`` or ``float32``.
        stored: The model's stored format (``stored_format``).
        seconds: Measured seconds per product by format (``measured_speeds``).
        widen_bytes: Bytes float32 weights would take.
        room: Bytes of the memory budget free for them.
    """
    if requested == "stored" or stored == "float32":
        why = "as requested" if requested == "stored" else "already float32"
        return FormatChoice(stored, stored, why)
    if widen_bytes > room:
        reason = (
            f"float32 would need {widen_bytes / 1e9:.1f} GB, {room / 1e9:.1f} GB free"
        )
        if requested == "float32":
            raise ValueError(f"compute_format='float32' does not fit: {reason}.")
        return FormatChoice(stored, stored, reason)
    if requested == "float32":
        return FormatChoice("float32", stored, "as requested")
    fast = seconds.get("float32")
    parts = [seconds.get(part) for part in stored.split("/")]
    if fast is None or None in parts:
        return FormatChoice(stored, stored, f"no speed measured for {stored}")
    slow = max(parts)
    if fast >= slow:
        return FormatChoice(stored, stored, f"{stored} is at least as fast here")
    return FormatChoice(
        "float32", stored, f"float32 products are {slow / fast:.1f}x faster here"
    )


def widen(model: nn.Module) -> None:
    """Dequantize and cast every floating parameter to float32, in place."""
    dequantize_model(model)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())


def measured_speeds(cache_dir: Path) -> dict[str, float]:
    """Seconds per matrix-vector product in each format, measured once per machine."""
    name = f"formats-{MEASURE_VERSION}"
    return machine_table.measured(
        cache_dir, name, _measure, valid=lambda v: isinstance(v, dict)
    )


def _measure() -> dict[str, float]:
    weights = mx.random.normal(SHAPE, key=mx.random.key(0))
    x = mx.random.normal((1, SHAPE[1]), key=mx.random.key(1))
    products = {"float32": lambda: x @ weights.T}
    for dtype in (mx.float16, mx.bfloat16):
        narrow = weights.astype(dtype)
        mx.eval(narrow)
        products[str(dtype).removeprefix("mlx.core.")] = lambda w=narrow, d=dtype: (
            x.astype(d) @ w.T
        )
    for bits in (8, 4):
        q = mx.quantize(weights, group_size=64, bits=bits)
        mx.eval(q)
        products[f"{bits}-bit"] = lambda q=q, b=bits: mx.quantized_matmul(
            x, *q, transpose=True, group_size=64, bits=b
        )
    seconds = {}
    for name, product in products.items():
        mx.eval(product())  # warm-up
        start = time.perf_counter()
        for _ in range(REPEATS):
            mx.eval(product())
        seconds[name] = (time.perf_counter() - start) / REPEATS
    return seconds
