"""Runs on the engine worker: load a checked model directory and describe it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import get_total_parameters

from convert import load_checked
from engine import exp_kernels, fast_blas
from engine.compute_format import (
    FormatChoice,
    choose,
    measured_speeds,
    stored_format,
    widen,
)
from engine.decode import LoadedModel
from engine.kv_cache import KVOptions
from engine.memory_budget import head_dim, kv_bytes_per_token, quantized_kv_bytes
from engine.schema import ModelInfo

MAX_CONTEXT = 1 << 20
PLAIN_KV = KVOptions()


def load_into(
    models: dict[str, LoadedModel],
    name: str,
    path: Path,
    *,
    compute_format: str = "stored",
    room: int = 0,
    kv: KVOptions = PLAIN_KV,
) -> LoadedModel:
    """Load ``path`` as ``name`` into ``models``: check the files, load, evaluate.

    Args:
        compute_format: ``auto`` (the faster of stored and float32 on this backend,
            if float32 fits ``room``), ``stored`` or ``float32``.
        room: Bytes of the memory budget free for this model's weights.
        kv: How its KV cache is kept (quantized, rotating or plain).

    Note: ``models`` is updated in place.
    """
    model, tokenizer, config = load_checked(path)
    exp_kernels.install()  # attention's softmax in vectorized kernels, same bits
    if kv.bits:
        kv.group_size(head_dim(config))  # refuse before widening anything
    choice = _pick_format(model, compute_format, room)
    if choice.compute != choice.stored:
        widen(model)
    models[name] = describe(name, path, model, tokenizer, config, choice, kv=kv)
    return models[name]


def _pick_format(model: nn.Module, requested: str, room: int) -> FormatChoice:
    stored = stored_format(model)
    if requested == "stored" or stored == "float32":
        return choose(requested, stored, {}, 0, 0)
    seconds = measured_speeds(fast_blas.cache_dir()) if requested == "auto" else {}
    return choose(requested, stored, seconds, 4 * get_total_parameters(model), room)


def describe(
    name: str,
    path: Path,
    model: nn.Module,
    tokenizer,
    config: dict,
    choice: FormatChoice | None = None,
    *,
    kv: KVOptions = PLAIN_KV,
) -> LoadedModel:
    """Evaluate a loaded model's weights and wrap it with its ``ModelInfo``."""
    mx.eval(model.parameters())
    choice = choice or FormatChoice(*[stored_format(model)] * 2, "as stored")
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
        kv_bytes_per_token=_kv_bytes(config, activation_bytes(model), kv),
        stored_format=choice.stored,
        compute_format=choice.compute,
        format_reason=choice.reason,
        kv_bits=kv.bits,
        max_kv_size=kv.max_size,
    )
    return LoadedModel(model, tokenizer, config, info)


def _kv_bytes(config: dict, dtype_bytes: int, kv: KVOptions) -> int:
    full = kv_bytes_per_token(config, dtype_bytes)
    if not kv.bits:
        return full
    group = kv.group_size(head_dim(config))
    return quantized_kv_bytes(full, dtype_bytes, kv.bits, group)


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
