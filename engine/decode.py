"""The generation loop for one completion: prefill, decode, detokenize, stop, measure.

Runs on the engine worker thread only (see worker.py); everything here touches MLX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step

from engine import int8_linear
from engine.draft_length import DraftCosts
from engine.kv_cache import KVOptions
from engine.memory_budget import head_dim
from engine.sampling import PENALTY_CONTEXT, to_logits_processors, to_sampler
from engine.schema import Chunk, ModelInfo, SamplingParams
from engine.sequence import Sequence
from engine.speculative import SpecStats, speculative_generate_step

PREFILL_STEP = 512  # prompt tokens per forward while prefilling


@dataclass(frozen=True)
class Speculation:
    """Speculate with a draft model, by prompt lookup, or (auto) both.

    ``auto`` picks each round's source (lookup, ``draft`` when given, or none) by
    the tokens per unit of cost each has yielded so far (``engine.draft_choice``).
    """

    draft: LoadedModel | None = None
    num_draft_tokens: int = 4
    auto: bool = False
    costs: DraftCosts | None = None  # measured forward costs (draft_length)


@dataclass
class LoadedModel:
    """A model the worker holds: MLX module, mlx-lm tokenizer wrapper, config, info."""

    model: nn.Module
    tokenizer: Any
    config: dict
    info: ModelInfo
    _drafting: nn.Module | None = field(default=None, init=False, repr=False)

    def drafting(self) -> nn.Module:
        """The module to draft with: on the CPU fast path a copy reading its decoder
        layers' weights as int8 (``engine.int8_linear``; a quarter of the float32
        size of those weights, held while this model is), else ``model``. Built on
        first use, on the worker thread."""
        if self._drafting is None:
            narrow = int8_linear.available() and int8_linear.int8_copy(self.model)
            self._drafting = narrow or self.model
        return self._drafting


def decode(
    loaded: LoadedModel,
    tokens: list[int],
    params: SamplingParams,
    *,
    cache: list[Any],
    cached_tokens: int = 0,
    index: int = 0,
    stream: mx.Stream,
    produced: list[int],
    speculation: Speculation | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Chunk]:
    """Stream chunks of completion ``index`` for the prompt ``tokens``.

    Args:
        loaded: The model.
        tokens: The whole prompt, token ids.
        params: Sampling parameters (already validated).
        cache: KV cache holding the first ``cached_tokens`` of ``tokens``.
        cached_tokens: How many prompt tokens ``cache`` already holds.
        index: Which of the ``n`` completions this is (seeds differ per index).
        stream: The worker's MLX stream.
        produced: Receives every token the model sampled, EOS included.
        speculation: Draft with a model or by prompt lookup; ``None`` decodes plainly.
        cancelled: Polled once per token; True ends the completion as "cancelled".

    Yields:
        One chunk per generated token (its text may be empty while a character or a
        possible stop string is incomplete); the last has ``finish_reason``
        and ``stats``.

    Note: ``cache`` is updated in place and holds prompt + generated tokens on return;
    ``produced`` is extended in place.
    """
    sequence = Sequence(
        loaded,
        tokens,
        params,
        index=index,
        cached_tokens=cached_tokens,
        spec=SpecStats() if speculation else None,
    )
    steps = _steps(
        loaded,
        tokens,
        params,
        cache,
        cached_tokens,
        index,
        stream,
        max_tokens=sequence.max_tokens,
        speculation=speculation,
        spec=sequence.spec,
    )
    try:
        for token, logprobs, *_ in steps:
            chunk = sequence.push(token, logprobs, cancelled=cancelled())
            if chunk is not None:
                yield chunk
            if sequence.finish_reason:
                break
    finally:
        steps.close()
        produced.extend(sequence.produced)
    yield sequence.finish()


def _steps(
    loaded,
    tokens,
    params,
    cache,
    cached,
    index,
    stream,
    *,
    max_tokens,
    speculation,
    spec,
):
    """mlx-lm's generate_step, or exact speculative decoding with the same yields."""
    processors = with_prefix(params, tokens[:cached])
    if speculation is None:
        return generate_step(
            mx.array(tokens[cached:]),
            loaded.model,
            stream,
            max_tokens=max_tokens,
            sampler=to_sampler(params, index=index),
            logits_processors=processors,
            prompt_cache=cache,
            prefill_step_size=PREFILL_STEP,
            kv_bits=loaded.info.kv_bits,
            kv_group_size=kv_group_size(loaded),
            quantized_kv_start=0,  # as admitted: every token's KV at kv_bits
        )
    draft = speculation.draft
    return speculative_generate_step(
        mx.array(tokens[cached:]),
        loaded.model,
        stream,
        params=params,
        index=index,
        max_tokens=max_tokens,
        history=tokens,
        draft_model=draft.drafting() if draft else None,
        lookup=draft is None or speculation.auto,
        auto=speculation.auto,
        num_draft_tokens=speculation.num_draft_tokens,
        logits_processors=processors,
        prompt_cache=cache,
        prefill_step_size=PREFILL_STEP,
        stats=spec,
        costs=speculation.costs,
    )


def kv_group_size(loaded: LoadedModel) -> int:
    """The KV quantization group for the model (64 unless its heads need 32)."""
    if not loaded.info.kv_bits:
        return 64  # unused: the cache is not quantized
    return KVOptions(loaded.info.kv_bits).group_size(head_dim(loaded.config))


def with_prefix(params: SamplingParams, prefix: list[int]) -> list:
    """Processors that also see the cached part of the prompt, as on a cold run."""
    processors = to_logits_processors(params)
    if not processors or not prefix:
        return processors
    head = mx.array(prefix[-PENALTY_CONTEXT:])
    return [
        lambda seen, logits, p=p: p(mx.concatenate([head, seen]), logits)
        for p in processors
    ]
