"""Which batch a request joins (plain, lookup or draft) and the row it brings to it."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from engine.batch import Batch, Row, can_batch
from engine.batch_draft import DraftBatch
from engine.batch_speculative import SpecBatch, SpecRow
from engine.decode import LoadedModel, with_prefix
from engine.kv_cache import KVOptions, make_prompt_cache
from engine.sampling import to_sampler
from engine.schema import SamplingParams

BatchKey = tuple[str, str, str | None]  # (model, kind, draft model)


def batch_kind(
    request: Any, loaded: LoadedModel, draft: LoadedModel | None = None
) -> str | None:
    """Which batch a request joins: "plain", "lookup", "draft" (``draft`` is the
    request's draft model), or None (not batchable)."""
    if not _can_batch(loaded):
        return None
    if request.speculation is None:
        return "plain"
    if request.speculation == "lookup" or (
        request.speculation == "auto" and request.draft_model is None
    ):
        return "lookup"
    if (
        request.speculation == "draft"
        and draft is not None
        and _can_batch(draft)
        and _same_vocab(loaded, draft)
    ):
        return "draft"
    return None  # "auto" with a draft model picks its source per round, alone


def batch_key(request: Any, kind: str) -> BatchKey:
    """The batch a request of ``kind`` joins: one per model, kind and draft model."""
    return request.model, kind, request.draft_model if kind == "draft" else None


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


def new_batch(
    kind: str,
    loaded: LoadedModel,
    stream: mx.Stream,
    *,
    draft: LoadedModel | None = None,
) -> Batch | SpecBatch:
    """An empty batch of ``kind`` for ``loaded`` (and ``draft``, for "draft")."""
    if kind == "plain":
        return Batch(loaded.model, stream)
    if kind == "draft":
        return DraftBatch(loaded.model, draft.drafting(), stream)
    return SpecBatch(loaded.model, stream)


def _can_batch(loaded: LoadedModel) -> bool:
    """Plain KV caches only: quantized or rotating ones cannot merge or roll back."""
    return not kv_options(loaded).active and can_batch(make_prompt_cache(loaded.model))


def _same_vocab(loaded: LoadedModel, draft: LoadedModel) -> bool:
    """Logits of one width: the acceptance rule lines p and q up token by token."""
    size, draft_size = (
        getattr(getattr(m.model, "args", None), "vocab_size", None)
        for m in (loaded, draft)
    )
    return size is not None and size == draft_size
