"""Runs on the engine worker: load a checked model directory and describe it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import get_total_parameters

from convert import load_checked
from engine.decode import LoadedModel
from engine.memory_budget import kv_bytes_per_token
from engine.schema import ModelInfo

MAX_CONTEXT = 1 << 20


def load_into(models: dict[str, LoadedModel], name: str, path: Path) -> LoadedModel:
    """Load ``path`` as ``name`` into ``models``: check the files, load, evaluate.

    Note: ``models`` is updated in place.
    """
    model, tokenizer, config = load_checked(path)
    mx.eval(model.parameters())
    nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    parameters = get_total_parameters(model)
    context = config.get("max_position_embeddings") or tokenizer.model_max_length
    info = ModelInfo(
        name=name,
        path=str(path),
        parameters=parameters,
        bits=nbytes * 8 / max(parameters, 1),
        memory_gb=nbytes / 1e9,
        context_length=int(min(context, MAX_CONTEXT)),
        has_chat_template=getattr(tokenizer, "chat_template", None) is not None,
        kv_bytes_per_token=kv_bytes_per_token(config, activation_bytes(model)),
    )
    models[name] = LoadedModel(model, tokenizer, config, info)
    return models[name]


def activation_bytes(model: nn.Module) -> int:
    """Bytes per element of the activations (and so of the KV cache).

    The most common float dtype among the parameters: the weights of a float model,
    the scales and norms of a quantized one.
    """
    counts = Counter(
        v.dtype
        for _, v in tree_flatten(model.parameters())
        if mx.issubdtype(v.dtype, mx.floating)
    )
    return counts.most_common(1)[0][0].size if counts else 2


def unload_from(models: dict[str, LoadedModel], name: str) -> None:
    """Drop the model and give its buffers back.

    Note: ``models`` is updated in place.
    """
    models.pop(name, None)
    mx.clear_cache()
