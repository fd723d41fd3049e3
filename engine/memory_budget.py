"""Memory admission: refuse a model load or a request that would not fit the budget.

Measured with mlx 0.32.4: ``mx.set_memory_limit`` did not stop a 1 GiB allocation
under a 100 MiB limit, and on Metal an out-of-memory error aborts the process. So the
engine counts before it allocates: the weights of the loaded models plus the KV cache
a request needs (layers x kv_heads x head_dim x 2 x dtype bytes per token, from the
model's config), against a budget.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BUDGET_FRACTION = 0.75  # of physical RAM, where MLX recommends nothing
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz")
UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"))


class InsufficientMemory(ValueError):
    """A model load or a request would not fit the engine's memory budget.

    Attributes:
        needed_bytes: What the load or the request needs on top of what is held.
        available_bytes: What the budget has left now.
        budget_bytes: The engine's memory budget.
    """

    def __init__(
        self, message: str, *, needed_bytes: int, available_bytes: int, budget: int
    ) -> None:
        super().__init__(message)
        self.needed_bytes, self.available_bytes = needed_bytes, available_bytes
        self.budget_bytes = budget

    @property
    def shortfall_bytes(self) -> int:
        """Bytes to free before it fits."""
        return max(self.needed_bytes - self.available_bytes, 0)


def size(nbytes: float) -> str:
    """``1.25 GB``, ``3.4 MB``, ``512 bytes``: readable in an error message."""
    for scale, unit in UNITS:
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} bytes"


def physical_memory() -> int:
    """Bytes of RAM in this machine; 0 when the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 0


def default_memory_budget(device_info: Mapping[str, Any]) -> int:
    """MLX's recommended working set (Metal), else a fraction of physical RAM.

    Args:
        device_info: ``mx.device_info()`` of the engine's device.
    """
    recommended = device_info.get("max_recommended_working_set_size")
    if recommended:
        return int(recommended)
    return int(physical_memory() * DEFAULT_BUDGET_FRACTION)


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int) -> int:
    """KV-cache bytes one token takes: layers x kv_heads x head_dim x 2 x dtype bytes.

    Args:
        config: The model's config.json; text_config is used for multimodal ones.
        dtype_bytes: Bytes per element of the activations (4 for float32).
    """
    config = config.get("text_config") or config
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 0
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    return int(layers) * int(kv_heads) * head_dim(config) * 2 * dtype_bytes


def head_dim(config: Mapping[str, Any]) -> int:
    """Values per attention head (the last axis of the KV cache)."""
    config = config.get("text_config") or config
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    hidden = config.get("hidden_size") or config.get("n_embd") or 0
    return int(config.get("head_dim") or hidden // heads)


def quantized_kv_bytes(full: int, dtype_bytes: int, bits: int, group: int = 64) -> int:
    """KV bytes per token once quantized: ``bits`` per value plus a scale and a bias
    (activation dtype) per ``group`` values; ``full`` is the unquantized figure."""
    values = full // dtype_bytes
    return values * bits // 8 + values // group * 2 * dtype_bytes


def weight_file_bytes(path: Path) -> int:
    """Bytes of the weight files of a model directory (what loading will hold)."""
    path = Path(path)
    files = [path] if path.is_file() else path.iterdir()
    return sum(p.stat().st_size for p in files if p.suffix in WEIGHT_SUFFIXES)


@dataclass(frozen=True)
class Held:
    """A loaded model's share of the budget: its weights and its KV bytes per token."""

    weights: int
    kv_per_token: int
    max_kv_tokens: int | None = None  # a rotating cache holds no more than this


class MemoryLedger:
    """What the engine holds (weights by model) against its budget; thread-safe."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"The memory budget must be >= 1 byte, got {budget}.")
        self.budget = budget
        self._models: dict[str, Held] = {}
        self._lock = threading.Lock()

    def held(self, *, without: str | None = None) -> int:
        """Bytes the loaded models' weights take (``without`` one of them)."""
        with self._lock:
            return sum(h.weights for n, h in self._models.items() if n != without)

    def record(
        self,
        name: str,
        weights: int,
        kv_per_token: int,
        max_kv_tokens: int | None = None,
    ) -> None:
        with self._lock:
            self._models[name] = Held(weights, kv_per_token, max_kv_tokens)

    def forget(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    def _kv_per_token(self, name: str) -> int:
        held = self._models.get(name)
        return held.kv_per_token if held else 0

    def _kv_tokens(self, name: str, tokens: int) -> int:
        held = self._models.get(name)
        cap = held.max_kv_tokens if held else None
        return tokens if cap is None else min(tokens, cap)

    def check_load(self, name: str, nbytes: int) -> None:
        """Refuse to load ``nbytes`` of weights the budget has no room for.

        Raises:
            InsufficientMemory: Says what is needed, what is free and what is loaded.
        """
        with self._lock:
            others = {n: h.weights for n, h in self._models.items() if n != name}
        free = max(self.budget - sum(others.values()), 0)
        if nbytes <= free:
            return
        loaded = ", ".join(f"{n} {size(b)}" for n, b in others.items())
        raise InsufficientMemory(
            f"Not enough memory to load {name}: its weights need {size(nbytes)} but "
            f"{size(free)} of the {size(self.budget)} memory budget is free (loaded: "
            f"{loaded or 'nothing'}). Unload a model or raise the budget.",
            needed_bytes=nbytes,
            available_bytes=free,
            budget=self.budget,
        )

    def check_request(self, needs: Iterable[tuple[str, int]]) -> None:
        """Refuse generations whose KV caches would not fit beside the weights.

        Args:
            needs: ``(model name, tokens)`` per cache held at once: prompt plus
                max_tokens for a model, and again for its draft model.

        Raises:
            InsufficientMemory: Says what is needed and how many tokens would fit.
        """
        with self._lock:
            per_token = [
                (self._kv_per_token(m), self._kv_tokens(m, t)) for m, t in needs
            ]
        kv = sum(size * tokens for size, tokens in per_token)
        tokens = sum(tokens for _, tokens in per_token)
        weights = self.held()
        free = max(self.budget - weights, 0)
        if kv <= free:
            return
        fit = free // max(kv // max(tokens, 1), 1)
        raise InsufficientMemory(
            f"Not enough memory for this request: its KV cache for {tokens} tokens "
            f"(prompt + max_tokens) needs {size(kv)}, but the loaded weights take "
            f"{size(weights)} of the {size(self.budget)} memory budget, leaving "
            f"{size(free)} (room for about {fit} tokens). Lower max_tokens, shorten "
            "the prompt, or unload a model.",
            needed_bytes=kv,
            available_bytes=free,
            budget=self.budget,
        )
