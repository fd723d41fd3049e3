"""KV caches: mlx-lm's helpers (imported here once) and the cache options of a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlx_lm.models.cache import (
    BatchKVCache,
    KVCache,
    LRUPromptCache,
    can_trim_prompt_cache,
    dynamic_roll,
    make_prompt_cache,
    trim_prompt_cache,
)

__all__ = [
    "KV_BITS",
    "BatchKVCache",
    "KVOptions",
    "KVCache",
    "LRUPromptCache",
    "can_trim_prompt_cache",
    "dynamic_roll",
    "make_prompt_cache",
    "trim_prompt_cache",
]

KV_BITS = (4, 8)
KV_GROUP_SIZES = (64, 32)  # MLX quantizes in groups of 32, 64 or 128 values


@dataclass(frozen=True)
class KVOptions:
    """How a model's KV cache is kept (mlx-lm's ``--kv-bits`` and ``--max-kv-size``).

    Attributes:
        bits: Quantize keys and values to 4 or 8 bits (from the first token), or None.
        max_size: Keep only the last ``max_size`` tokens (a rotating cache), or None.

    Either trades quality for memory; such caches are not batched, reused through the
    prompt cache, or rolled back, so they decode one request at a time without
    speculation.
    """

    bits: int | None = None
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.bits is not None and self.bits not in KV_BITS:
            raise ValueError(f"kv_bits must be 4 or 8, got {self.bits}.")
        if self.max_size is not None and self.max_size < 16:
            raise ValueError(f"max_kv_size must be at least 16, got {self.max_size}.")
        if self.bits is not None and self.max_size is not None:
            raise ValueError(
                "kv_bits and max_kv_size cannot be combined (mlx-lm cannot quantize a "
                "rotating cache); pick one."
            )

    def group_size(self, head_dim: int) -> int:
        """The quantization group for a cache whose heads hold ``head_dim`` values.

        Raises:
            ValueError: No group size MLX supports divides ``head_dim``.
        """
        for size in KV_GROUP_SIZES:
            if head_dim % size == 0:
                return size
        raise ValueError(
            f"kv_bits needs attention heads of a multiple of 32 values; this model's "
            f"have {head_dim}. Load it without kv_bits (max_kv_size bounds memory)."
        )

    @property
    def active(self) -> bool:
        return self.bits is not None or self.max_size is not None

    def make(self, model: Any) -> list[Any]:
        """A fresh cache for ``model`` (rotating when ``max_size`` is set)."""
        return make_prompt_cache(model, max_kv_size=self.max_size)
