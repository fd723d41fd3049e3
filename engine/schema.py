"""Engine requests and results as frozen dataclasses; no MLX, so UIs can use them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_TOKENS = 512
MAX_N = 16
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
FINISH_REASONS = ("stop", "length", "cancelled", "error", "content_filter")


def _check_number(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}.")


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode: a lone surrogate cannot be encoded.

    Raises:
        ValueError: Names ``what``, the code point and where it is.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} has a lone surrogate U+{ord(text[e.start]):04X} at character "
            f"{e.start}; send valid UTF-8 text."
        ) from None


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}.")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request; validated on construction.

    Attributes:
        max_tokens: Tokens to generate at most (>= 1).
        temperature: 0 is greedy; higher is more random (0..2, OpenAI's range).
        top_p: Nucleus sampling mass (0 < top_p <= 1; 1 disables it).
        top_k: Keep only the k most likely tokens (0 disables it).
        min_p: Drop tokens below min_p times the top probability (0 disables it).
        repetition_penalty: Multiplicative penalty on recent tokens (1 disables it).
        presence_penalty: Additive penalty on tokens already present (-2..2).
        frequency_penalty: Additive penalty proportional to counts (-2..2).
        logit_bias: ``(token_id, bias)`` pairs added to the logits (-100..100).
        stop: Strings that end generation; matched across token boundaries, never
            emitted.
        seed: Same seed, same output; ``None`` draws a fresh one.
        n: Number of completions for the prompt.
        logprobs: Return the log probability of each sampled token.
        top_logprobs: Also return this many most likely alternatives per token.
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1, 1 << 20)
        _check_number("temperature", self.temperature, 0.0, 2.0)
        _check_number("top_p", self.top_p, 1e-9, 1.0)
        _check_int("top_k", self.top_k, 0, 1 << 20)
        _check_number("min_p", self.min_p, 0.0, 1.0)
        _check_number("repetition_penalty", self.repetition_penalty, 1e-3, 10.0)
        _check_number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        for token, bias in self.logit_bias:
            _check_int("logit_bias token id", token, 0, 1 << 24)
            _check_number("logit_bias value", bias, -100.0, 100.0)
        if len(self.stop) > MAX_STOPS:
            raise ValueError(f"stop takes at most {MAX_STOPS} strings.")
        for s in self.stop:
            if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
                raise ValueError(
                    f"each stop string must be 1 to {MAX_STOP_CHARS} characters, "
                    f"got {s!r:.80}."
                )
            check_text(s, "A stop string")
        if self.seed is not None:
            _check_int("seed", self.seed, -(1 << 63), (1 << 64) - 1)
        _check_int("n", self.n, 1, MAX_N)
        _check_int("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)


@dataclass(frozen=True)
class Stats:
    """Measurements of one generation.

    Attributes:
        prompt_tokens: Tokens in the prompt.
        cached_tokens: Prompt tokens reused from the prompt cache (not recomputed).
        completion_tokens: Tokens generated.
        ttft_s: Seconds from request start to the first token.
        prefill_tps: Prompt tokens computed per second (cached ones excluded).
        decode_tps: Generated tokens per second after the first.
        peak_memory_gb: Peak memory MLX used so far (GB).
        acceptance_rate: Share of drafted tokens accepted (speculation only).
        tokens_per_forward: Tokens emitted per target forward (speculation only).
        draft_s: Seconds spent drafting (draft forwards, lookups; speculation only).
        verify_s: Seconds spent in target forwards verifying drafts (speculation).
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    peak_memory_gb: float = 0.0
    acceptance_rate: float | None = None
    tokens_per_forward: float | None = None
    draft_s: float | None = None
    verify_s: float | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log probability and the most likely alternatives."""

    token: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One piece of a stream: new text for completion ``index``.

    The last chunk of each completion has a ``finish_reason`` and ``stats``;
    ``error`` says what went wrong when ``finish_reason == "error"``. With the safety
    filter on, text is released only once screened (a chunk's text may lag its
    token), and the last chunk carries the verdict in ``safety``;
    ``finish_reason == "content_filter"`` when the filter stopped the answer.
    """

    text: str
    index: int = 0
    token: int | None = None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    stats: Stats | None = None
    error: str | None = None
    safety: Any = None  # the safety filter's Verdict for the completion (last chunk)


@dataclass(frozen=True)
class Choice:
    """One finished completion."""

    index: int
    text: str
    tokens: tuple[int, ...]
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    """Token counts in OpenAI's sense."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """The result of ``Model.generate``: one choice per ``n``."""

    choices: tuple[Choice, ...]
    usage: Usage
    stats: tuple[Stats, ...] = field(default=())

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is.

    Attributes:
        name: The name it was loaded by.
        path: The MLX directory.
        parameters: Number of parameters (quantized ones counted unpacked).
        bits: Mean bits per weight.
        memory_gb: Memory the weights take (GB).
        context_length: Maximum tokens of prompt plus completion.
        has_chat_template: Whether messages can be formatted.
        kv_bytes_per_token: KV-cache bytes per token of context (layers x kv_heads x
            head_dim x 2 x dtype bytes); what memory admission counts.
        stored_format: The weights' format on disk: ``4-bit``, ``bfloat16``, ...
        compute_format: The format it computes in (``float32`` when widened because
            that is faster on this backend; see ``engine/compute_format.py``).
        format_reason: Why that format was chosen.
        kv_bits: KV cache quantized to this many bits (4 or 8), or None.
        max_kv_size: The KV cache keeps only the last this many tokens (a rotating
            cache), or None for all of them.
    """

    name: str
    path: str
    parameters: int
    bits: float
    memory_gb: float
    context_length: int
    has_chat_template: bool
    kv_bytes_per_token: int = 0
    stored_format: str = ""
    compute_format: str = ""
    format_reason: str = ""
    kv_bits: int | None = None
    max_kv_size: int | None = None


@dataclass(frozen=True)
class MemoryInfo:
    """Memory MLX uses on its device (GB).

    Attributes:
        active_gb: Held by arrays now (weights, KV caches).
        peak_gb: The most held at once since the engine started.
        cache_gb: Freed buffers MLX keeps for reuse.
        total_gb: The device's memory (unified memory on Apple Silicon, RAM on CPU);
            0 when unknown.
    """

    active_gb: float
    peak_gb: float
    cache_gb: float
    total_gb: float
