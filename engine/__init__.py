"""Silica's engine: load models and generate, from Python, the CLI, HTTP and the UI.

from engine import load
model = load("smollm2-135m-instruct")
print(model.generate([{"role": "user", "content": "Hi!"}], max_tokens=50).text)
"""

from __future__ import annotations

from convert import DEFAULT_MODEL, CatalogError, ModelFileError, default_cache_dir
from engine.memory_budget import InsufficientMemory
from engine.model_pool import ModelPool, model_name
from engine.model_store import (
    StoredModel,
    catalog_names,
    convert_checkpoint,
    list_models,
    pull_model,
)
from engine.runtime import ChunkStream, Engine, Model, load
from engine.safety import (
    ACTIONS,
    CATEGORIES,
    HAZARDS,
    ContentBlocked,
    Finding,
    Policy,
    Verdict,
    moderate,
    redact,
)
from engine.schema import (
    Choice,
    Chunk,
    Completion,
    MemoryInfo,
    ModelInfo,
    SamplingParams,
    Stats,
    TokenLogprob,
    Usage,
)
from engine.side_by_side import CompareStream, Side
from engine.worker import EngineBusy, EngineDied, GenerateRequest

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "DEFAULT_MODEL",
    "HAZARDS",
    "CatalogError",
    "Choice",
    "Chunk",
    "ChunkStream",
    "CompareStream",
    "Completion",
    "ContentBlocked",
    "Engine",
    "EngineBusy",
    "EngineDied",
    "Finding",
    "GenerateRequest",
    "InsufficientMemory",
    "MemoryInfo",
    "Model",
    "ModelFileError",
    "ModelInfo",
    "ModelPool",
    "Policy",
    "SamplingParams",
    "Side",
    "Stats",
    "StoredModel",
    "TokenLogprob",
    "Usage",
    "Verdict",
    "catalog_names",
    "convert_checkpoint",
    "default_cache_dir",
    "list_models",
    "load",
    "model_name",
    "moderate",
    "pull_model",
    "redact",
]
