"""Silica's engine: load models and generate, from Python, the CLI, HTTP and the UI.

from engine import load
model = load("smollm2-135m-instruct")
print(model.generate([{"role": "user", "content": "Hi!"}], max_tokens=50).text)
"""

from __future__ import annotations

from engine.runtime import ChunkStream, Engine, Model, load
from engine.schema import (
    Choice,
    Chunk,
    Completion,
    ModelInfo,
    SamplingParams,
    Stats,
    TokenLogprob,
    Usage,
)
from engine.worker import EngineBusy, EngineDied

__all__ = [
    "Choice",
    "Chunk",
    "ChunkStream",
    "Completion",
    "Engine",
    "EngineBusy",
    "EngineDied",
    "Model",
    "ModelInfo",
    "SamplingParams",
    "Stats",
    "TokenLogprob",
    "Usage",
    "load",
]
