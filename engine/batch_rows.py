"""Which batch a request joins (plain or lookup) and the row it brings to it."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from engine.batch import Batch, Row, can_batch
from engine.batch_speculative import SpecBatch, SpecRow
from engine.decode import LoadedModel, with_prefix
from engine.kv_cache import KVOptions, make_prompt_cache
from engine.sampling import to_sampler
from engine.schema import SamplingParams


def batch_kind(request: Any, loaded: LoadedModel) -> str | None:
    """Which batch a request joins: "plain", "lookup", or None (not batchable)."""
    if kv_options(loaded).active or not can_batch(make_prompt_cache(loaded.model)):
        return None
    if request.speculation is None:
        return "plain"
    if request.speculation == "lookup" or (
        request.speculation == "auto" and request.draft_model is None
    ):
        return "lookup"
    return None


def kv_options(loaded: LoadedModel) -> KVOptions:
    """The model's KV cache options (quantized, rotating or plain)."""
    return KVOptions(loaded.info.kv_bits, loaded.info.max_kv_size)


def new_row(kind: str, run: Any, request: Any, index: int, cached: int) -> Row:
    """Row ``index`` of ``request`` for a ``kind`` batch; ``run`` is its tag."""
    params: SamplingParams = request.params
    tokens = run.tokens
    processors = with_prefix(params, tokens[:cached])
    sampler = to_sampler(params, index=index) if params.temperature else None
    seen = mx.array(tokens[cached:]) if processors else None
    if kind == "plain":
        return Row(run, sampler, processors, seen)
    return SpecRow.make(
        run,
        request,
        index=index,
        sampler=sampler,
        processors=processors,
        seen=seen,
        seen_from=cached,
    )


def new_batch(kind: str, loaded: LoadedModel, stream: mx.Stream) -> Batch | SpecBatch:
    """An empty batch of ``kind`` for ``loaded``."""
    return (
        Batch(loaded.model, stream)
        if kind == "plain"
        else SpecBatch(loaded.model, stream)
    )
