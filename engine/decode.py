"""The generation loop for one completion: prefill, decode, detokenize, stop, measure.

Runs on the engine worker thread only (see worker.py); everything here touches MLX.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step

from engine.sampling import PENALTY_CONTEXT, to_logits_processors, to_sampler
from engine.schema import Chunk, ModelInfo, SamplingParams, Stats, TokenLogprob
from engine.speculative import SpecStats, speculative_generate_step
from engine.stops import StopMatcher

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


@dataclass
class LoadedModel:
    """A model the worker holds: MLX module, mlx-lm tokenizer wrapper, config, info."""

    model: nn.Module
    tokenizer: Any
    config: dict
    info: ModelInfo


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
    start = time.perf_counter()
    max_tokens = min(params.max_tokens, loaded.info.context_length - len(tokens))
    spec = SpecStats() if speculation else None
    steps = _steps(
        loaded,
        tokens,
        params,
        cache,
        cached_tokens,
        index,
        stream,
        max_tokens=max_tokens,
        speculation=speculation,
        spec=spec,
    )
    detokenizer = loaded.tokenizer.detokenizer
    detokenizer.reset()
    stops = StopMatcher(params.stop)
    eos = loaded.tokenizer.eos_token_ids
    finish, generated, first_at, matched = "length", 0, None, False
    for token, logprobs, *_ in steps:
        first_at = first_at or time.perf_counter()
        produced.append(token)
        if cancelled():
            finish = "cancelled"
            break
        if token in eos:
            finish = "stop"
            break
        generated += 1
        detokenizer.add_token(token)
        text, stopped = stops.push(detokenizer.last_segment)
        logprob = _logprob(loaded, token, logprobs, params) if params.logprobs else None
        # One chunk per token, even with no text yet (a partial character or a held
        # stop prefix), so token ids and logprobs stay complete.
        yield Chunk(text, index=index, token=token, logprob=logprob)
        if stopped:
            finish, matched = "stop", True
            break
    steps.close()
    tail = ""
    if not matched:  # release what the detokenizer and the stop matcher still hold
        detokenizer.finalize()
        # A token limit can cut a character in half; drop it rather than show U+FFFD.
        text, stopped = stops.push(detokenizer.last_segment.rstrip("\ufffd"))
        tail = text if stopped else text + stops.flush()
    end = time.perf_counter()
    first_at = first_at or end
    stats = Stats(
        prompt_tokens=len(tokens),
        cached_tokens=cached_tokens,
        completion_tokens=generated,
        ttft_s=first_at - start,
        prefill_tps=(len(tokens) - cached_tokens) / max(first_at - start, 1e-9),
        decode_tps=(generated - 1) / (end - first_at) if generated > 1 else 0.0,
        peak_memory_gb=mx.get_peak_memory() / 1e9,
        **_speculation_stats(spec),
    )
    yield Chunk(tail, index=index, finish_reason=finish, stats=stats)


def _speculation_stats(spec: SpecStats | None) -> dict[str, float]:
    if spec is None:
        return {}
    return {
        "acceptance_rate": spec.acceptance_rate,
        "tokens_per_forward": spec.tokens_per_forward,
        "draft_s": spec.draft_time_s,
        "verify_s": spec.verify_time_s,
    }


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
    processors = _with_prefix(params, tokens[:cached])
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
        draft_model=draft.model if draft else None,
        lookup=draft is None or speculation.auto,
        auto=speculation.auto,
        num_draft_tokens=speculation.num_draft_tokens,
        logits_processors=processors,
        prompt_cache=cache,
        prefill_step_size=PREFILL_STEP,
        stats=spec,
    )


def _with_prefix(params: SamplingParams, prefix: list[int]) -> list:
    """Processors that also see the cached part of the prompt, as on a cold run."""
    processors = to_logits_processors(params)
    if not processors or not prefix:
        return processors
    head = mx.array(prefix[-PENALTY_CONTEXT:])
    return [
        lambda seen, logits, p=p: p(mx.concatenate([head, seen]), logits)
        for p in processors
    ]


def _logprob(
    loaded: LoadedModel, token: int, logprobs: mx.array, params: SamplingParams
) -> TokenLogprob:
    decode_one = loaded.tokenizer.decode
    top: tuple[tuple[int, str, float], ...] = ()
    if params.top_logprobs:
        ids = mx.argpartition(-logprobs, kth=params.top_logprobs - 1)[
            : params.top_logprobs
        ]
        values = logprobs[ids].tolist()
        pairs = sorted(zip(ids.tolist(), values, strict=True), key=lambda p: -p[1])
        top = tuple((i, decode_one([i]), v) for i, v in pairs)
    return TokenLogprob(token, decode_one([token]), logprobs[token].item(), top)
