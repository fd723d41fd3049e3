"""Silica's engine: load models and generate, from Python, the CLI, HTTP and the UI.

from engine import load
model = load("smollm2-135m-instruct")
print(model.generate([{"role": "user", "content": "Hi!"}], max_tokens=50).text)
"""

from __future__ import annotations

import importlib
from typing import Any

# Names load on first use: `silica` must start (and re-execute itself onto the fast
# BLAS, engine/fast_blas.py) without paying for transformers and MLX first.
_EXPORTS = {
    "DEFAULT_MODEL": "convert",
    "CatalogError": "convert",
    "ModelFileError": "convert",
    "default_cache_dir": "convert",
    "InsufficientMemory": "engine.memory_budget",
    "ModelPool": "engine.model_pool",
    "model_name": "engine.model_pool",
    "StoredModel": "engine.model_store",
    "catalog_names": "engine.model_store",
    "convert_checkpoint": "engine.model_store",
    "list_models": "engine.model_store",
    "pull_model": "engine.model_store",
    "ChunkStream": "engine.runtime",
    "Engine": "engine.runtime",
    "Model": "engine.runtime",
    "load": "engine.runtime",
    "ACTIONS": "engine.safety",
    "CATEGORIES": "engine.safety",
    "HAZARDS": "engine.safety",
    "ContentBlocked": "engine.safety",
    "Finding": "engine.safety",
    "Policy": "engine.safety",
    "Verdict": "engine.safety",
    "moderate": "engine.safety",
    "redact": "engine.safety",
    "Choice": "engine.schema",
    "Chunk": "engine.schema",
    "Completion": "engine.schema",
    "MemoryInfo": "engine.schema",
    "ModelInfo": "engine.schema",
    "SamplingParams": "engine.schema",
    "Stats": "engine.schema",
    "TokenLogprob": "engine.schema",
    "Usage": "engine.schema",
    "CompareStream": "engine.side_by_side",
    "Side": "engine.side_by_side",
    "EngineBusy": "engine.worker",
    "EngineDied": "engine.worker",
    "GenerateRequest": "engine.worker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
