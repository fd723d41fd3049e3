"""One completion's output: sampled tokens in, chunks (text, logprobs, stats) out.

Shared by the single-sequence loop (``engine.decode``) and the batched one
(``engine.scheduler``), so a completion streams the same chunks either way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import mlx.core as mx

from engine.schema import Chunk, SamplingParams, Stats, TokenLogprob
from engine.stops import StopMatcher

if TYPE_CHECKING:
    from engine.decode import LoadedModel
    from engine.speculative import SpecStats


class Sequence:
    """Turns the tokens of completion ``index`` into chunks; ``finish_reason`` says
    when it is done.

    Args:
        loaded: The model (its tokenizer detokenizes).
        tokens: The whole prompt, token ids.
        params: Sampling parameters (already validated).
        index: Which of the ``n`` completions this is.
        cached_tokens: Prompt tokens reused from the prompt cache.
        start: ``time.perf_counter()`` when the completion started (prefill began).
        spec: Speculation counters to report (None for plain decoding).

    Note: ``push`` extends ``produced`` with every sampled token, EOS included.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        tokens: list[int],
        params: SamplingParams,
        *,
        index: int = 0,
        cached_tokens: int = 0,
        start: float | None = None,
        spec: SpecStats | None = None,
    ) -> None:
        self.loaded, self.tokens, self.params = loaded, tokens, params
        self.index, self.cached_tokens, self.spec = index, cached_tokens, spec
        self.start = time.perf_counter() if start is None else start
        self.max_tokens = min(
            params.max_tokens, loaded.info.context_length - len(tokens)
        )
        self.produced: list[int] = []
        self.finish_reason: str | None = None
        self._detokenizer = loaded.tokenizer.detokenizer
        self._detokenizer.reset()
        self._stops = StopMatcher(params.stop)
        self._eos = loaded.tokenizer.eos_token_ids
        self._generated, self._first_at, self._matched = 0, None, False

    def push(
        self, token: int, logprobs: mx.array | None, *, cancelled: bool = False
    ) -> Chunk | None:
        """Add one sampled token (``logprobs``: the target's (vocab,) at it).

        Returns:
            Its chunk, or None when the token ends the completion without one
            (EOS, or ``cancelled``); then ``finish_reason`` is set.
        """
        self._first_at = self._first_at or time.perf_counter()
        self.produced.append(token)
        if cancelled:
            self.finish_reason = "cancelled"
            return None
        if token in self._eos:
            self.finish_reason = "stop"
            return None
        self._generated += 1
        self._detokenizer.add_token(token)
        text, stopped = self._stops.push(self._detokenizer.last_segment)
        logprob = None
        if self.params.logprobs and logprobs is not None:
            logprob = _logprob(self.loaded, token, logprobs, self.params)
        if stopped:
            self.finish_reason, self._matched = "stop", True
        elif len(self.produced) >= self.max_tokens:
            self.finish_reason = "length"
        # One chunk per token, even with no text yet (a partial character or a held
        # stop prefix), so token ids and logprobs stay complete.
        return Chunk(text, index=self.index, token=token, logprob=logprob)

    def finish(self, reason: str | None = None) -> Chunk:
        """The last chunk: held text, the finish reason (``reason`` if not done
        yet, else "length") and stats."""
        self.finish_reason = self.finish_reason or reason or "length"
        tail = ""
        if not self._matched:  # release what the detokenizer and stops still hold
            self._detokenizer.finalize()
            # A token limit can cut a character in half; drop it, not show U+FFFD.
            segment = self._detokenizer.last_segment.rstrip("\ufffd")
            text, stopped = self._stops.push(segment)
            tail = text if stopped else text + self._stops.flush()
        return Chunk(
            tail, index=self.index, finish_reason=self.finish_reason, stats=self.stats()
        )

    def stats(self) -> Stats:
        """Measurements so far (ttft, decode tokens/s, cache hits, speculation)."""
        end = time.perf_counter()
        first_at = self._first_at or end
        fresh, generated = len(self.tokens) - self.cached_tokens, self._generated
        return Stats(
            prompt_tokens=len(self.tokens),
            cached_tokens=self.cached_tokens,
            completion_tokens=generated,
            ttft_s=first_at - self.start,
            prefill_tps=fresh / max(first_at - self.start, 1e-9),
            decode_tps=(generated - 1) / (end - first_at) if generated > 1 else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            **_speculation_stats(self.spec),
        )


def _speculation_stats(spec: SpecStats | None) -> dict[str, float]:
    if spec is None:
        return {}
    return {
        "acceptance_rate": spec.acceptance_rate,
        "tokens_per_forward": spec.tokens_per_forward,
        "draft_s": spec.draft_time_s,
        "verify_s": spec.verify_time_s,
    }


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
