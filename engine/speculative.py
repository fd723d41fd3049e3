"""Exact speculative decoding (draft model or prompt lookup) for ``generate_step``.

Drafts are verified in one target forward and accepted with probability
``min(1, p(d) / q(d))``, else replaced by a sample of ``normalize(max(0, p - q))``
(Leviathan et al., 2023): the output has exactly the target's distribution, and
greedy output equals plain greedy output. Runs on the engine worker thread only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.acceptance import accept_drafts
from engine.draft_choice import SourceChooser, size_ratio
from engine.draft_head import DRAFT_VOCAB, reduced_head
from engine.draft_length import (
    Acceptance,
    DraftCosts,
    best_k,
    default_row_costs,
)
from engine.kv_cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from engine.prompt_lookup import LOOKUP_NGRAMS, lookup_drafts
from engine.sampling import LogitsProcessor, Scale, normalize, to_key, to_scale
from engine.schema import SamplingParams

# Adaptive k stays within 1..max(this, num_draft_tokens); within that, the k with the
# most expected tokens per unit of cost (engine/draft_length.py).
MAX_ADAPTIVE_DRAFT = 7
# A draft model stops drafting once it is less sure than this of its token: a draft
# forward costs 0.3-0.45 of a target forward and a less likely token is mostly rejected,
# taking the rest of the round with it (llama.cpp's --draft-p-min idea).
DRAFT_P_MIN = 0.5


@dataclass
class SpecStats:
    """Counters of a speculative generation, updated in place while it runs.

    ``drafted``/``accepted`` count draft tokens, ``emitted`` yielded tokens and
    ``target_forwards`` target forwards after prefill (one per round); the times are
    seconds spent drafting (forwards or n-gram search) and verifying.
    """

    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    target_forwards: int = 0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.emitted / self.target_forwards if self.target_forwards else 0.0


def check_draft(tokenizer: Any, draft_tokenizer: Any) -> None:
    """Raise ValueError unless the draft's tokenizer has the main model's vocab."""
    vocab, draft_vocab = tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if vocab != draft_vocab:
        raise ValueError(
            f"The draft model's vocabulary ({len(draft_vocab)} tokens) differs from "
            f"the main model's ({len(vocab)} tokens); use a draft of the same family."
        )


@dataclass
class _Run:
    """What one generation carries between rounds."""

    model: nn.Module
    cache: list[Any]
    draft_model: Any  # nn.Module or its ReducedHead; None without one
    draft_cache: list[Any] | None
    tokens: list[int]  # history + every token yielded so far
    seen_from: int  # logits processors see tokens[seen_from:], as in generate_step
    target_len: int  # tokens the target cache holds (a prefix of ``tokens``)
    draft_len: int  # tokens the draft cache holds
    scale: Scale | None  # None is greedy
    processors: list[LogitsProcessor]
    stream: mx.Stream
    prefill_step_size: int
    k: int
    k_max: int
    stats: SpecStats
    key: mx.array  # split once per round; from the request's seed and index
    lookup: bool = False  # draft by n-gram lookup (first, when there is a draft model)
    draft_p_min: float = DRAFT_P_MIN
    chooser: SourceChooser | None = None  # auto: picks each round's draft source
    costs: DraftCosts = DraftCosts(default_row_costs())  # for choosing k
    acceptance: Acceptance = field(default_factory=Acceptance)

    def split_keys(self, count: int) -> mx.array:
        self.key, round_key = mx.random.split(self.key)
        return mx.random.split(round_key, count)


def speculative_generate_step(
    prompt: mx.array,
    model: nn.Module,
    stream: mx.Stream,
    *,
    params: SamplingParams,
    max_tokens: int,
    prompt_cache: list[Any],
    history: list[int] | None = None,
    index: int = 0,
    draft_model: nn.Module | None = None,
    draft_cache: list[Any] | None = None,
    lookup: bool = False,
    auto: bool = False,
    num_draft_tokens: int = 4,
    adaptive: bool = True,
    draft_p_min: float = DRAFT_P_MIN,
    logits_processors: list[LogitsProcessor] | None = None,
    prefill_step_size: int = 512,
    stats: SpecStats | None = None,
    costs: DraftCosts | None = None,
    draft_vocab: int = DRAFT_VOCAB,
) -> Iterator[tuple[int, mx.array, bool]]:
    """Generate like ``generate_step``, drafting with ``draft_model`` or by lookup.

    Args:
        prompt: The prompt tokens ``prompt_cache`` does not hold yet (at least one).
        model: The target model.
        stream: The MLX stream all work runs on.
        params: Temperature, top-p/top-k/min-p and seed (``max_tokens`` is ignored).
        max_tokens: Tokens to yield at most.
        prompt_cache: The target's KV cache holding the prompt before ``prompt``.
        history: The whole prompt (cached part + ``prompt``), for the draft model
            and lookup; defaults to ``prompt``.
        index: Which completion of the request this is (seeds differ per index).
        draft_model: A small model with the target's vocabulary.
        draft_cache: The draft's KV cache, holding a prefix of ``history``; a new
            one is made when None.
        lookup: Draft by n-gram match in ``history`` + output; with a draft model
            too, a lookup match (of 2 tokens or more) drafts first, for free.
        auto: Each round, draft from lookup, the draft model or not at all,
            whichever has emitted the most tokens per forward's worth of cost
            (see ``engine.draft_choice``).
        num_draft_tokens: Draft tokens per round (the start value when adaptive).
        adaptive: After each round, k becomes the one with the most expected
            tokens per unit of cost given the acceptance so far and ``costs``
            (1 <= k <= max(7, num_draft_tokens)).
        draft_p_min: The draft model stops a round's drafting after a token it
            gives less than this probability (0 drafts all k).
        logits_processors: As for ``generate_step``: they see ``prompt`` + output.
        prefill_step_size: Prompt tokens per forward while prefilling.
        stats: Counters, updated in place.
        costs: What verifies of 1, 2, ... rows and a draft forward cost against a
            one-row target forward (``engine.draft_length.measured_costs``); when
            None, a flat guess and the draft's share of the parameters.
        draft_vocab: Token ids the draft model's output layer keeps besides the
            text's own (``engine.draft_head``); 0 keeps them all.

    Returns:
        A generator of ``(token, logprobs, from_draft)``: the token, the target's
        processed log probabilities at its position (vocab,), and whether a draft
        proposed it.

    Raises:
        ValueError: Neither ``draft_model`` nor ``lookup``, a cache that cannot be
            trimmed, an empty prompt or a draft of another vocab size.

    Note: ``prompt_cache`` and ``draft_cache`` are updated in place; when the
    generator ends or is closed each holds exactly ``history`` + the yielded tokens.
    """
    history = list(history) if history is not None else prompt.tolist()
    draft_cache = _check_args(model, draft_model, draft_cache, lookup, prompt_cache)
    if not 0 < len(prompt) <= len(history) or num_draft_tokens < 1:
        raise ValueError("Speculation needs a non-empty prompt within the history.")
    costs = costs or DraftCosts(default_row_costs(), size_ratio(draft_model, model))
    if draft_model is not None:
        draft_model = reduced_head(draft_model, history, draft_vocab)
    run = _Run(
        model=model,
        cache=prompt_cache,
        draft_model=draft_model,
        draft_cache=draft_cache,
        tokens=history,
        seen_from=len(history) - len(prompt),
        target_len=len(history) - 1,
        draft_len=_held_prefix(draft_cache, len(history) - 1),
        scale=to_scale(params),
        processors=list(logits_processors or []),
        stream=stream,
        prefill_step_size=prefill_step_size,
        k=num_draft_tokens,
        k_max=max(MAX_ADAPTIVE_DRAFT, num_draft_tokens) if adaptive else 0,
        stats=stats if stats is not None else SpecStats(),
        key=to_key(params, index),
        lookup=lookup,
        chooser=SourceChooser(costs.draft_cost, costs.row_costs) if auto else None,
        draft_p_min=draft_p_min,
        costs=costs,
    )
    return _generate(run, prompt, max_tokens)


def _generate(
    run: _Run, prompt: mx.array, max_tokens: int
) -> Iterator[tuple[int, mx.array, bool]]:
    end, step = len(run.tokens) + max_tokens, run.prefill_step_size
    with mx.stream(run.stream):
        _prefill(run.model, run.cache, prompt.tolist()[:-1], step)
        if run.draft_model is not None:
            _prefill_draft(run, step)
        try:
            # With a draft model the first token comes from a plain step: one target
            # forward rather than a round of drafts and a verify.
            k = 0 if run.draft_model is not None else run.k
            while len(run.tokens) < end:
                for token, logprobs, from_draft in _round(
                    run, end - len(run.tokens), k
                ):
                    run.tokens.append(token)
                    run.stats.emitted += 1
                    yield token, logprobs, from_draft
                k = run.k
        finally:
            _sync(run)


def _prefill_draft(run: _Run, step: int) -> None:
    """Feed the draft model all of ``run.tokens`` but the last."""
    _prefill(run.draft_model, run.draft_cache, run.tokens[run.draft_len : -1], step)
    run.draft_len = len(run.tokens) - 1


def _held_prefix(cache: list[Any] | None, length: int) -> int:
    """Trim a draft cache holding a prefix of the history to at most ``length``."""
    if cache is None:
        return length
    _trim(cache, cache[0].offset - length)
    return min(cache[0].offset, length)


def _check_args(
    model: nn.Module,
    draft_model: nn.Module | None,
    draft_cache: list[Any] | None,
    lookup: bool,
    prompt_cache: list[Any],
) -> list[Any] | None:
    if draft_model is None and not lookup:
        raise ValueError("Pass a draft_model, lookup=True or both.")
    if draft_model is not None:
        size, draft_size = (m.args.vocab_size for m in (model, draft_model))
        if size != draft_size:
            raise ValueError(
                f"The draft model has vocab size {draft_size}, the main model "
                f"{size}; use a draft of the same family."
            )
        if draft_cache is None:
            draft_cache = make_prompt_cache(draft_model)
    for cache in (prompt_cache, draft_cache or []):
        if not can_trim_prompt_cache(cache):
            kinds = sorted({type(c).__name__ for c in cache})
            raise ValueError(f"Speculation needs trimmable KV caches (got {kinds}).")
    return draft_cache


def _forward(model: nn.Module, cache: list[Any], tokens: mx.array) -> mx.array:
    return model(tokens[None], cache=cache)[0].astype(mx.float32)  # (n, V)


def _prefill(model: nn.Module, cache: list[Any], tokens: list[int], step: int) -> None:
    for start in range(0, len(tokens), step):
        model(mx.array(tokens[start : start + step])[None], cache=cache)
        mx.eval([c.state for c in cache])


def _round(run: _Run, budget: int, k: int) -> list[tuple[int, mx.array, bool]]:
    """Draft up to k tokens, verify them in one forward, accept; return the tokens."""
    k = min(k, budget - 1)  # a round yields at most k + 1 tokens
    keys = run.split_keys(k + 2) if run.scale is not None else None
    start = time.perf_counter()
    drafts, q, source = _draft(run, k, keys)
    middle = time.perf_counter()
    inputs = mx.array(run.tokens[run.target_len :] + drafts)
    logits = _forward(run.model, run.cache, inputs)[-len(drafts) - 1 :]
    seen = mx.array(run.tokens[run.seen_from :] + drafts if run.processors else [])
    size = len(run.tokens) - run.seen_from
    logprobs = normalize(logits, lambda j: seen[: size + j], run.processors)
    n, token = accept_drafts(logprobs, drafts, q, run.scale, keys)
    _trim(run.cache, len(drafts) - n)
    run.target_len = len(run.tokens) + n
    if source == "model" and drafts:
        # The draft cache holds tokens + d1..d(k-1); keep the accepted part.
        kept = min(n, len(drafts) - 1)
        _trim(run.draft_cache, len(drafts) - 1 - kept)
        run.draft_len = len(run.tokens) + kept
    if run.chooser is not None:
        run.chooser.record(source, n + 1, len(drafts))
    _count(run, len(drafts), n, (middle - start, time.perf_counter() - middle))
    accepted = [(d, logprobs[j], True) for j, d in enumerate(drafts[:n])]
    return [*accepted, (token, logprobs[n], False)]


def _count(run: _Run, drafted: int, n: int, times: tuple[float, float]) -> None:
    """Add a round to the stats and adapt k to its acceptance."""
    run.stats.drafted += drafted
    run.stats.accepted += n
    run.stats.target_forwards += 1
    run.stats.draft_time_s += times[0]
    run.stats.verify_time_s += times[1]
    if run.k_max and drafted:
        run.acceptance.record(drafted, n)
        rate = run.acceptance.rate
        costs = run.costs
        run.k = best_k(rate, costs.draft_cost, costs.row_costs, run.k_max)


def _draft(
    run: _Run, k: int, keys: mx.array | None
) -> tuple[list[int], mx.array | None, str]:
    """Drafts, their distributions (None: one-hot) and their source."""
    # Without auto, a draft model's tokens beat a mere unigram match.
    plain_hybrid = run.chooser is None and run.draft_model is not None
    ngrams = LOOKUP_NGRAMS[:-1] if plain_hybrid else LOOKUP_NGRAMS
    found = lookup_drafts(run.tokens, k, ngrams) if run.lookup else []
    if run.chooser is not None:
        available = [
            source
            for source, ok in (
                ("lookup", found),
                ("model", run.draft_model is not None and k > 0),
                ("plain", True),
            )
            if ok
        ]
        source = run.chooser.pick(available)
    else:
        source = "lookup" if found or run.draft_model is None else "model"
    if source == "model":
        return (*_draft_with_model(run, k, keys), source)
    return (found if source == "lookup" else []), None, source


def _draft_with_model(
    run: _Run, k: int, keys: mx.array | None
) -> tuple[list[int], mx.array | None]:
    """Sample up to k tokens from the draft; return them and their distributions.

    Stops early once the draft gives its token less than ``run.draft_p_min``.
    """
    if k == 0:
        return [], None
    base = mx.array(run.tokens[run.seen_from :] if run.processors else [], mx.int32)
    inputs = mx.array(run.tokens[run.draft_len :])
    drafts: list[int] = []
    qs: list[mx.array] = []
    for i in range(k):
        logits = _forward(run.draft_model, run.draft_cache, inputs)[-1:]
        seen = mx.concatenate([base, mx.array(drafts, mx.int32)])
        logprobs = normalize(logits, lambda _, s=seen: s, run.processors)
        if run.scale is None:
            inputs = mx.argmax(logprobs, axis=-1)
            sure = logprobs[0, inputs[0]]
        else:
            scaled = run.scale(logprobs)
            inputs = mx.random.categorical(scaled, key=keys[i])
            qs.append(mx.softmax(scaled, axis=-1))
            sure = mx.log(qs[-1][0, inputs[0]])
        mx.eval(inputs, sure)
        drafts.append(inputs.item())
        if sure.item() < math.log(max(run.draft_p_min, 1e-30)):
            break
    run.draft_len = len(run.tokens) + len(drafts) - 1  # the last draft is not fed yet
    return drafts, mx.concatenate(qs) if qs else None


def _trim(cache: list[Any], count: int) -> None:
    if count > 0:
        trim_prompt_cache(cache, count)


def _sync(run: _Run) -> None:
    """Make each cache hold exactly ``run.tokens`` (trim, or feed lazily)."""
    pairs = [(run.model, run.cache, run.target_len)]
    if run.draft_model is not None:
        pairs.append((run.draft_model, run.draft_cache, run.draft_len))
    for model, cache, held in pairs:
        _trim(cache, held - len(run.tokens))
        if held < len(run.tokens):
            # Left lazy: computed only if the cache is used again.
            model(mx.array(run.tokens[held:])[None], cache=cache)
