"""mlx-lm's KV-cache helpers, imported once for the worker and the speculative loop."""

from __future__ import annotations

from mlx_lm.models.cache import (
    LRUPromptCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)

__all__ = [
    "LRUPromptCache",
    "can_trim_prompt_cache",
    "make_prompt_cache",
    "trim_prompt_cache",
]
