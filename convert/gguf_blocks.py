"""Turn GGUF tensor bytes into MLX arrays: Q4/Q5/Q8 blocks bit-exact, the rest decoded.

MLX's affine format computes ``w = scale * q + bias`` per group of ``group_size``
values, with unsigned ``q`` packed as a little-endian bit stream into uint32 words.
GGUF's Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 blocks are the same idea with 32 values per
block, so they map over without rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize

T = GGMLQuantizationType
NATIVE_BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q4_K: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q8_0: 8}
FLOAT_TYPES = {T.F32: np.float32, T.F16: np.float16, T.F64: np.float64}
# Bits to re-quantize to when the user asks for none: the nearest MLX width.
NEAREST_BITS = {
    T.Q2_K: 2,
    T.Q3_K: 3,
    T.Q5_K: 5,
    T.Q6_K: 6,
    T.Q8_1: 8,
    T.Q8_K: 8,
    T.IQ4_NL: 4,
    T.IQ4_XS: 4,
}
GGUF_GROUP_SIZE = 32
PACK_ROWS = 4096


class UnsupportedTensorType(ValueError):
    """A GGUF block type that neither MLX nor the gguf package can decode."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"GGUF type {type_name} cannot be decoded yet; re-export the model with a "
            "common type (Q4_K_M, Q8_0, F16)"
        )


@dataclass(frozen=True)
class Quantized:
    """An MLX affine-quantized matrix: ``w = scales * unpack(weight) + biases``."""

    weight: mx.array  # (rows, cols * bits / 32) uint32
    scales: mx.array  # (rows, cols / group_size)
    biases: mx.array  # (rows, cols / group_size)
    group_size: int
    bits: int


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints (rows, cols) as MLX does: a little-endian bit stream."""
    rows = q.shape[0]
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    out = np.empty((rows, q.shape[1] * bits // 8), dtype=np.uint8)
    for r in range(0, rows, PACK_ROWS):
        # Eight values fill exactly `bits` bytes of a little-endian uint64.
        block = q[r : r + PACK_ROWS]
        v = block.reshape(-1, 8).astype(np.uint64) << shifts  # (n * cols / 8, 8)
        words = np.bitwise_or.reduce(v, axis=-1)
        out[r : r + len(block)] = (
            words.view(np.uint8)
            .reshape(len(block), -1, 8)[..., :bits]
            .reshape(len(block), -1)
        )
    return out.view(np.uint32)  # (rows, cols * bits / 32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF puts values 0..15 of a block in the low nibbles, 16..31 in the high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """Q5 blocks keep the fifth bit of value j in bit j of a little-endian uint32."""
    high = qh.copy().view(np.uint32)  # (rows, n_blocks, 1)
    return ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4


def blocks_to_mlx(raw: np.ndarray, ggml_type: T, dtype: mx.Dtype) -> Quantized:
    """Repack Q4_0, Q4_1, Q4_K, Q5_0, Q5_1 or Q8_0 blocks as MLX triplets.

    Args:
        raw: The tensor's bytes, shape (rows, bytes per row).
        ggml_type: One of ``NATIVE_BITS``.
        dtype: dtype of the scales and biases. float32 keeps every value exact;
            float16 does too except for Q4_K, whose group scales need 17 bits;
            bfloat16 rounds them.

    Returns:
        The quantized matrix with group size 32.
    """
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, type_size)  # (rows, n_blocks, type_size)
    bits = NATIVE_BITS[ggml_type]
    if ggml_type == T.Q4_K:
        return _q4_k(blocks, rows, dtype)
    d = _half(blocks, 0)  # (rows, n_blocks)
    if ggml_type == T.Q8_0:
        q = blocks[..., 2:].view(np.int8).astype(np.int16) + 128  # (rows, n_blocks, 32)
        return _triplet(q, d, -128.0 * d, rows, bits, dtype)
    # Q4_1 and Q5_1 store an offset m (w = d*q + m); Q4_0 and Q5_0 centre q instead.
    has_min = ggml_type in (T.Q4_1, T.Q5_1)
    start = 4 if has_min else 2
    if bits == 5:
        q = _nibbles(blocks[..., start + 4 :]) | _fifth_bits(
            blocks[..., start : start + 4]
        )
    else:
        q = _nibbles(blocks[..., start:])
    biases = _half(blocks, 2) if has_min else -float(1 << (bits - 1)) * d
    return _triplet(q, d, biases, rows, bits, dtype)


def _q4_k(blocks: np.ndarray, rows: int, dtype: mx.Dtype) -> Quantized:
    """Q4_K: 256-value blocks of eight 32-value groups, each ``d*sc*q - dmin*m``.

    Each group is an MLX affine group of 32 with scale ``d*sc`` and bias ``-dmin*m``;
    both products are exact in float32 (a float16 times a 6-bit integer).
    """
    n_blocks = blocks.shape[1]
    d, dmin = _half(blocks, 0)[..., None], _half(blocks, 2)[..., None]
    sc, mins = Q4_K.get_scale_min(blocks[..., 4:16].reshape(-1, 12))
    sc = sc.reshape(rows, n_blocks, 8).astype(np.float32)
    mins = mins.reshape(rows, n_blocks, 8).astype(np.float32)
    # 4 runs of 32 bytes: low nibbles are group 2j, high nibbles group 2j+1.
    qs = blocks[..., 16:].reshape(rows, n_blocks, 4, 1, 32)
    q = (qs >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F  # (rows, n, 4, 2, 32)
    scales = (d * sc).reshape(rows, -1)
    biases = -(dmin * mins).reshape(rows, -1)
    return _triplet(q, scales, biases, rows, 4, dtype)


def _half(blocks: np.ndarray, at: int) -> np.ndarray:
    return blocks[..., at : at + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _triplet(q, scales, biases, rows: int, bits: int, dtype: mx.Dtype) -> Quantized:
    packed = _pack(q.reshape(rows, -1), bits)
    return Quantized(
        mx.array(packed),
        mx.array(scales).astype(dtype),
        mx.array(biases).astype(dtype),
        GGUF_GROUP_SIZE,
        bits,
    )


def decode(raw: np.ndarray, ggml_type: T, shape: tuple[int, ...]) -> mx.array:
    """Decode any GGUF tensor to float32 with the gguf package (the reference)."""
    if ggml_type in FLOAT_TYPES:
        values = raw.view(FLOAT_TYPES[ggml_type]).astype(np.float32)
    else:
        try:
            values = dequantize(raw, ggml_type)
        except NotImplementedError as e:
            raise UnsupportedTensorType(ggml_type.name) from e
    return mx.array(values.reshape(shape))


def quantize(w: mx.array, group_size: int, bits: int, dtype: mx.Dtype) -> Quantized:
    """Quantize a float matrix with MLX's affine quantization."""
    q, scales, biases = mx.quantize(
        w.astype(mx.float32), group_size=group_size, bits=bits
    )
    return Quantized(q, scales.astype(dtype), biases.astype(dtype), group_size, bits)


def dequantize_mlx(q: Quantized) -> mx.array:
    """The float32 values an MLX layer computes with (for tests and quality checks)."""
    return mx.dequantize(
        q.weight,
        q.scales.astype(mx.float32),
        q.biases.astype(mx.float32),
        group_size=q.group_size,
        bits=q.bits,
    )
