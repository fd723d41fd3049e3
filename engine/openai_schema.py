"""OpenAI's wire format: request bodies in as `SamplingParams`, chunks out as JSON.

Pure functions and small dataclasses; no MLX and no web framework, so the server
stays a thin layer and this stays easy to test.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.schema import Chunk, SamplingParams, Stats, TokenLogprob

IMPOSSIBLE = -9999.0
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# Passed to SamplingParams as given; it checks types and ranges.
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "n",
)
# OpenAI parameters we cannot honour: refused rather than silently ignored.
UNSUPPORTED = ("tools", "functions", "audio", "prediction", "suffix", "echo")


class ApiError(Exception):
    """An error the client caused or should retry, sent in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return error_json(self.message, self.kind, param=self.param, code=self.code)


def error_json(
    message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class ApiRequest:
    """A validated chat or completions request."""

    model: str
    prompt: str | list[dict[str, str]]
    params: SamplingParams
    chat: bool
    stream: bool = False
    include_usage: bool = False
    speculation: str | None = None  # Silica extension: "lookup", "draft", "auto"
    draft_model: str | None = None  # Silica extension: a served model to draft with


def _typed(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if value is not None and (wrong_bool or not isinstance(value, kinds)):
        raise ApiError(400, f"{key} must be {what}, got {value!r}.", param=key)
    return value


def parse_chat(body: dict[str, Any]) -> ApiRequest:
    """Validate a ``/v1/chat/completions`` body."""
    logprobs = _typed(body, "logprobs", (bool,), "a boolean") or False
    top = _typed(body, "top_logprobs", (int,), "an integer")
    if top and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    params = _sampling(body, max_tokens, logprobs=logprobs, top_logprobs=top or 0)
    messages = _messages(body.get("messages"))
    return ApiRequest(
        _model_name(body), messages, params, True, *_streaming(body), *_spec(body)
    )


def parse_completion(body: dict[str, Any]) -> ApiRequest:
    """Validate a ``/v1/completions`` body (``logprobs`` is the top-k count)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(
            400, "prompt must be a non-empty string (or a list of one).", param="prompt"
        )
    top = _typed(body, "logprobs", (int,), "an integer")
    best_of = body.get("best_of")
    if best_of not in (None, 1, body.get("n", 1)):
        raise ApiError(400, "best_of other than n is not supported.", param="best_of")
    params = _sampling(
        body, body.get("max_tokens"), logprobs=top is not None, top_logprobs=top or 0
    )
    return ApiRequest(
        _model_name(body), prompt, params, False, *_streaming(body), *_spec(body)
    )


def _model_name(body: dict[str, Any]) -> str:
    """The requested model, once the parameters we cannot honour are refused."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model must name a served model.", param="model")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False, "", []):
            raise ApiError(400, f"{key} is not supported by this server.", param=key)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(
            400,
            "Only response_format {'type': 'text'} is supported.",
            param="response_format",
        )
    return name


def _spec(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """Silica's extension fields: ``speculation`` and ``draft_model``."""
    kinds = "'lookup', 'draft' or 'auto'"
    speculation = _typed(body, "speculation", (str,), kinds)
    draft = _typed(body, "draft_model", (str,), "a served model name")
    if speculation not in (None, "lookup", "draft", "auto"):
        raise ApiError(400, f"speculation must be {kinds}.", param="speculation")
    if (speculation == "draft") != bool(draft) and speculation in ("draft", "lookup"):
        need = "needs" if speculation == "draft" else "takes no"
        message = f"speculation {speculation!r} {need} draft_model."
        raise ApiError(400, message, param="draft_model")
    return (speculation or ("draft" if draft else None)), draft


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _typed(body, "stream", (bool,), "a boolean") or False
    options = _typed(body, "stream_options", (dict,), "an object")
    if options is not None and not stream:
        raise ApiError(
            400, "stream_options needs stream: true.", param="stream_options"
        )
    usage = (options or {}).get("include_usage", False)
    if not isinstance(usage, bool):
        raise ApiError(400, "include_usage must be a boolean.", param="stream_options")
    return stream, usage


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list.", param="messages")
    out = []
    for m in value:
        role = m.get("role") if isinstance(m, dict) else None
        if role not in CHAT_ROLES:
            raise ApiError(
                400, f"Each message needs a role in {CHAT_ROLES}.", param="messages"
            )
        out.append({"role": role, "content": _content(m.get("content"))})
    return out


def _content(content: Any) -> str:
    """Message content as text: a string, null, or a list of text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(p, dict)
        and p.get("type") == "text"
        and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ApiError(
        400,
        "Message content must be a string or a list of text parts.",
        param="messages",
    )


def _sampling(
    body: dict[str, Any], max_tokens: Any, *, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    kwargs = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        kwargs["stop"] = (stop,) if isinstance(stop, str) else _tuple(stop, "stop")
    bias = _typed(body, "logit_bias", (dict,), "an object of token id -> bias")
    if bias:
        kwargs["logit_bias"] = _logit_bias(bias)
    try:
        return SamplingParams(**kwargs, logprobs=logprobs, top_logprobs=top_logprobs)
    except ValueError as e:
        name = str(e).split(" ")[0]
        raise ApiError(400, str(e), param=name if name in body else None) from None


def _logit_bias(bias: dict[str, Any]) -> tuple[tuple[int, Any], ...]:
    if not all(k.isascii() and k.isdigit() and len(k) <= 9 for k in bias):
        raise ApiError(
            400,
            'logit_bias keys must be token ids, such as "50256".',
            param="logit_bias",
        )
    return tuple((int(k), v) for k, v in bias.items())


def _tuple(value: Any, key: str) -> tuple:
    if not isinstance(value, list):
        raise ApiError(400, f"{key} must be a string or a list of strings.", param=key)
    return tuple(value)


@dataclass(frozen=True)
class Reply:
    """The identity every JSON object of one response repeats."""

    id: str
    created: int
    model: str
    chat: bool

    @classmethod
    def new(cls, model: str, *, chat: bool) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model, chat)

    def head(self, *, chunk: bool = False) -> dict[str, Any]:
        kind = "text_completion"
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        ids = {"id": self.id, "object": kind, "created": self.created}
        return ids | {"model": self.model}


@dataclass
class ChoiceParts:
    """One choice as it arrives: text pieces, token logprobs and where they start."""

    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    length: int = 0
    finish_reason: str | None = None
    stats: Stats | None = None


class Tally:
    """Accumulates the chunks of all ``n`` choices of one request."""

    def __init__(self, n: int) -> None:
        self.parts = [ChoiceParts() for _ in range(n)]

    def add(self, chunk: Chunk) -> int:
        """Record ``chunk``; return the character offset its text starts at."""
        part = self.parts[chunk.index]
        start = part.length
        part.texts.append(chunk.text)
        part.length += len(chunk.text)
        if chunk.logprob is not None:
            part.logprobs.append(chunk.logprob)
            part.offsets.append(start)
        if chunk.finish_reason:
            part.finish_reason, part.stats = chunk.finish_reason, chunk.stats
        return start

    def usage(self) -> dict[str, Any]:
        """``usage`` (prompt counted once, as upstream for n > 1) and ``silica_stats``:
        the engine's stats per choice."""
        stats = [p.stats for p in self.parts if p.stats is not None]
        first = stats[0] if stats else Stats()
        completion = sum(s.completion_tokens for s in stats)
        usage = {
            "prompt_tokens": first.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": first.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
        }
        per_choice = [asdict(p.stats) if p.stats else None for p in self.parts]
        return {"usage": usage, "silica_stats": per_choice}


def _finite(logprob: float) -> float:
    """JSON has no -inf; OpenAI reports impossible tokens as -9999."""
    return logprob if math.isfinite(logprob) else IMPOSSIBLE


def _token_json(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode())}


def chat_logprobs(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    content = [
        _token_json(lp.text, lp.logprob)
        | {"top_logprobs": [_token_json(t, v) for _, t, v in lp.top]}
        for lp in logprobs
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(
    logprobs: list[TokenLogprob], offsets: list[int]
) -> dict[str, Any]:
    return {
        "tokens": [lp.text for lp in logprobs],
        "token_logprobs": [_finite(lp.logprob) for lp in logprobs],
        "top_logprobs": [{t: _finite(v) for _, t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _choice(
    reply: Reply, index: int, part: ChoiceParts, params: SamplingParams, *, delta: bool
) -> dict[str, Any]:
    text = "".join(part.texts)
    choice: dict[str, Any] = {"index": index}
    if not reply.chat:
        choice["text"] = text
    elif delta:
        choice["delta"] = {"content": text} if text else {}
    else:
        choice["message"] = {"role": "assistant", "content": text}
    logprobs = None
    if params.logprobs and reply.chat:
        logprobs = chat_logprobs(part.logprobs)
    elif params.logprobs:
        logprobs = completion_logprobs(part.logprobs, part.offsets)
    return choice | {"logprobs": logprobs, "finish_reason": part.finish_reason}


def response_json(reply: Reply, tally: Tally, params: SamplingParams) -> dict:
    """The whole (non-streaming) response body."""
    choices = [
        _choice(reply, i, part, params, delta=False)
        for i, part in enumerate(tally.parts)
    ]
    return reply.head() | {"choices": choices} | tally.usage()


def chunk_json(
    reply: Reply, chunk: Chunk, offset: int, params: SamplingParams, usage: bool
) -> dict:
    """One streamed piece of choice ``chunk.index`` that starts at ``offset``."""
    part = ChoiceParts([chunk.text], finish_reason=chunk.finish_reason)
    if chunk.logprob:
        part.logprobs, part.offsets = [chunk.logprob], [offset]
    choice = _choice(reply, chunk.index, part, params, delta=True)
    return reply.head(chunk=True) | {"choices": [choice]} | _null_usage(usage)


def role_json(reply: Reply, index: int, usage: bool) -> dict:
    """The first chat chunk of a choice: it names the role, as OpenAI's does."""
    delta = {"role": "assistant", "content": ""}
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
    return reply.head(chunk=True) | {"choices": [choice]} | _null_usage(usage)


def usage_json(reply: Reply, tally: Tally) -> dict:
    """The final chunk ``stream_options.include_usage`` asks for: no choices."""
    return reply.head(chunk=True) | {"choices": []} | tally.usage()


def _null_usage(usage: bool) -> dict:
    return {"usage": None} if usage else {}
