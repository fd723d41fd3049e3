"""The Python API every surface calls: `Engine` owns the worker, `Model` generates."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from convert import model_dir
from engine.chunk_stream import ChunkStream, completion_of
from engine.compute_format import check_compute_format
from engine.kv_cache import KVOptions
from engine.loader import load_into, unload_from
from engine.memory_budget import InsufficientMemory, MemoryLedger, weight_file_bytes
from engine.safety.policy import Policy
from engine.safety.screen import GuardedStream, screen_prompt
from engine.schema import (
    Chunk,
    Completion,
    MemoryInfo,
    ModelInfo,
    SamplingParams,
    check_text,
)
from engine.speculative import check_draft
from engine.worker import (
    EngineWorker,
    GenerateRequest,
    Job,
    memory_info,
)

if TYPE_CHECKING:
    from engine.side_by_side import CompareStream, Side

Messages = Sequence[dict[str, Any]]
Prompt = str | Messages | Sequence[int]  # raw text, chat messages, or token ids
DEFAULT_POLICY = Policy()


class Model:
    """A loaded model: generate or stream text from a prompt or chat messages."""

    def __init__(self, engine: Engine, name: str, info: ModelInfo, tokenizer: Any):
        self._engine, self.name, self.info = engine, name, info
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The engine whose worker holds this model."""
        return self._engine

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids: messages go through the chat template; a string or ids do not.

        Raises:
            ValueError: The prompt is empty, or the chat template rejects the messages.
        """
        if _is_token_ids(prompt):
            if (
                not prompt
                or max(prompt) >= self._tokenizer.vocab_size
                or min(prompt) < 0
            ):
                raise ValueError(
                    "Token ids must be non-empty and within the vocabulary."
                )
            return list(prompt)
        if not isinstance(prompt, str) and not self.info.has_chat_template:
            raise ValueError(f"{self.name} has no chat template; pass a plain prompt.")
        for text in _texts(prompt):
            check_text(text, "The prompt")
        # Fast tokenizers are not safe to call from several threads at once.
        with self._tokenizer_lock:
            try:
                tokens = (
                    self._tokenizer.encode(prompt)
                    if isinstance(prompt, str)
                    else self._tokenizer.apply_chat_template(
                        list(prompt), add_generation_prompt=True
                    )
                )
            except TemplateError as e:
                raise ValueError(f"The chat template rejected the messages: {e}") from e
        if not tokens:
            raise ValueError("The prompt is empty; give at least one token of text.")
        return list(tokens)

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        draft: Model | None = None,
        speculation: str | None = None,
        **kwargs: Any,
    ) -> ChunkStream:
        """Stream chunks of text as they are generated.

        Args:
            prompt: A raw prompt, OpenAI-style messages for the chat template, or
                token ids.
            params: Sampling parameters; keyword arguments build them instead.
            draft: A smaller model with the same tokenizer, loaded on the same engine,
                for exact speculative decoding (output distribution unchanged).
            speculation: ``"lookup"`` drafts from n-gram matches in the prompt and
                the text so far (no second model); ``"auto"`` picks each round
                among lookup, ``draft`` (if given) and no drafting by what has
                paid off so far; ``None`` decodes plainly (or with ``draft``).
            **kwargs: Fields of ``SamplingParams`` (max_tokens, temperature, ...).

        Returns:
            An iterator of ``Chunk``; the last chunk of each of the ``n`` completions
            has ``finish_reason`` and ``stats``. Cancel it from any thread.

        Raises:
            ValueError: Bad parameters, a prompt that does not fit the context, or a
                draft whose vocabulary differs.
            ContentBlocked: The engine's safety policy blocks the prompt (a
                ValueError; ``.verdict`` says why).
            InsufficientMemory: The KV cache for the prompt plus ``max_tokens``
                would not fit the engine's memory budget beside the loaded weights.
            EngineBusy: Too many requests are queued.

        ``max_tokens`` is cut to the context the prompt leaves. With the engine's
        safety filter on (the default), the prompt is screened (and redacted where
        the policy says so) and the answer's text is released only once screened;
        see ``Engine``.
        """
        policy, verdict = self._engine.safety, None
        if policy is not None:
            prompt, verdict = screen_prompt(prompt, policy, self._tokenizer.decode)
        request = self.prepare(
            prompt, params, draft=draft, speculation=speculation, **kwargs
        )
        chunks = ChunkStream(self._submit(request), self._engine.worker)
        if policy is None:
            return chunks
        return GuardedStream(chunks, policy, verdict, request.params.n)

    def _submit(self, request: GenerateRequest) -> Job:
        """Queue the request on the worker (a distributed model runs it in lockstep)."""
        return self._engine.worker.generate(request)

    def prepare(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        draft: Model | None = None,
        speculation: str | None = None,
        **kwargs: Any,
    ) -> GenerateRequest:
        """Tokenize and check a request for ``Engine.compare`` (arguments: ``stream``).

        ``max_tokens`` is cut to the context the prompt leaves.

        Raises:
            ValueError: As ``stream`` does.
            InsufficientMemory: As ``stream`` does.
        """
        params = params or SamplingParams(**kwargs)
        tokens = self.encode(prompt)
        params = self._fit(tokens, params)
        request = GenerateRequest(
            self.name, tuple(tokens), params, **self._speculation(draft, speculation)
        )
        self._engine.check_memory([request])
        return request

    def _speculation(self, draft: Model | None, speculation: str | None) -> dict:
        if (draft or speculation) and (self.info.kv_bits or self.info.max_kv_size):
            raise ValueError(
                f"{self.name} keeps a quantized or rotating KV cache, which cannot be "
                "rolled back; drop the speculation or load it without kv_bits and "
                "max_kv_size."
            )
        if speculation not in (None, "lookup", "draft", "auto"):
            raise ValueError(
                f"speculation must be 'lookup', 'draft' or 'auto', got {speculation!r}."
            )
        if draft is None:
            if speculation == "draft":
                raise ValueError("speculation='draft' needs draft=<a loaded Model>.")
            return {"speculation": speculation}
        if draft._engine is not self._engine:
            raise ValueError("Load the draft model on the same Engine as the target.")
        check_draft(self._tokenizer, draft._tokenizer)
        if speculation == "lookup":
            raise ValueError("speculation='lookup' takes no draft model.")
        return {"speculation": speculation or "draft", "draft_model": draft.name}

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        draft: Model | None = None,
        speculation: str | None = None,
        **kwargs: Any,
    ) -> Completion:
        """Generate whole completions (see ``stream`` for the arguments)."""
        params = params or SamplingParams(**kwargs)
        parts: dict[int, list[Chunk]] = {i: [] for i in range(params.n)}
        for chunk in self.stream(prompt, params, draft=draft, speculation=speculation):
            parts[chunk.index].append(chunk)
        return completion_of(parts)

    def _fit(self, tokens: list[int], params: SamplingParams) -> SamplingParams:
        """``params`` with max_tokens cut to the context left after the prompt."""
        context = self.info.context_length
        if len(tokens) >= context:
            raise ValueError(
                f"The prompt has {len(tokens)} tokens; {self.name} takes at most "
                f"{context - 1} before generating. Shorten the prompt."
            )
        vocab = self._tokenizer.vocab_size
        if bad := [t for t, _ in params.logit_bias if t >= vocab]:
            raise ValueError(f"logit_bias names token ids {bad} beyond the vocabulary.")
        left = context - len(tokens)
        return replace(params, max_tokens=left) if params.max_tokens > left else params


def _texts(prompt: Prompt) -> Iterator[str]:
    """The strings of a prompt: itself, or every string value of its messages."""
    if isinstance(prompt, str):
        yield prompt
        return
    for message in prompt:
        if isinstance(message, dict):
            yield from (v for v in message.values() if isinstance(v, str))


def _is_token_ids(prompt: object) -> bool:
    ids = isinstance(prompt, list | tuple)
    return ids and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


class Engine:
    """Owns the engine thread and the models it holds; use as a context manager.

    Args:
        safety: The safety policy every ``Model.stream`` applies to prompts and
            answers (``Policy()``, the default policy, unless given); None turns
            the filter off.
        memory_budget: Bytes the weights and KV caches may take together; loads and
            requests beyond it raise ``InsufficientMemory``. Default: MLX's
            recommended working set on Metal, else 75% of physical RAM.
        compute_format: How loaded models compute: ``auto`` (default) widens
            quantized or half-precision weights to float32 where that is faster on
            this backend (MLX's CPU) and fits the budget; ``stored`` keeps the file's
            format; ``float32`` always widens. ``Model.info`` says what was chosen.
        kv_bits: Quantize every loaded model's KV cache to 4 or 8 bits.
        max_kv_size: Keep only the last this many tokens of each KV cache (rotating).
            Either saves memory (admission counts it) but turns off batching, the
            prompt cache and speculation for those models.
        **worker_options: ``max_queue``, ``prompt_cache_bytes``, ... of the worker.
    """

    def __init__(
        self,
        *,
        safety: Policy | None = DEFAULT_POLICY,
        memory_budget: int | None = None,
        compute_format: str = "auto",
        kv_bits: int | None = None,
        max_kv_size: int | None = None,
        **worker_options: Any,
    ) -> None:
        if memory_budget is not None and memory_budget < 1:
            raise ValueError(f"memory_budget must be >= 1 byte, got {memory_budget}.")
        check_compute_format(compute_format)
        self.safety = safety
        self.compute_format = compute_format
        self.kv = KVOptions(kv_bits, max_kv_size)  # raises ValueError when invalid
        self.worker = EngineWorker(memory_budget=memory_budget, **worker_options)
        self.worker.start()
        self._finalizer = weakref.finalize(self, self.worker.stop)
        budget = self.worker.call(lambda models: self.worker.memory_budget).result()
        self.ledger = MemoryLedger(budget)

    @property
    def memory_budget(self) -> int:
        """Bytes the weights and KV caches may take together."""
        return self.ledger.budget

    def load(self, name_or_path: str, *, name: str | None = None) -> Model:
        """Load a model: a catalog name, an MLX or Hugging Face directory, a GGUF file.

        Catalog models and GGUF files are converted once into the cache, keeping their
        own quantization.

        Raises:
            ModelFileError: A model file is malformed; ValueError for a bad name.
            InsufficientMemory: Its weights do not fit beside the loaded ones (checked
                from the file sizes before loading, and again once loaded).
        """
        path = model_dir(name_or_path)
        name = name or name_or_path
        self.ledger.check_load(name, weight_file_bytes(path))
        room = self.memory_budget - self.ledger.held(without=name)
        loaded = self.worker.call(
            lambda models: load_into(
                models,
                name,
                path,
                compute_format=self.compute_format,
                room=room,
                kv=self.kv,
            )
        ).result()
        info = loaded.info
        try:  # the files can understate it (a dtype widened while loading)
            self.ledger.check_load(name, round(info.memory_gb * 1e9))
        except InsufficientMemory:
            self.worker.call(lambda models: unload_from(models, name)).result()
            raise
        self.ledger.record(
            name, round(info.memory_gb * 1e9), info.kv_bytes_per_token, info.max_kv_size
        )
        return Model(self, name, info, loaded.tokenizer)

    def unload(self, name: str) -> None:
        """Free a model's memory."""
        self.worker.call(lambda models: unload_from(models, name)).result()
        self.ledger.forget(name)

    def check_memory(self, requests: Sequence[GenerateRequest]) -> None:
        """Refuse requests whose KV caches, held at once, would not fit the budget.

        Raises:
            InsufficientMemory: Says what is needed and what is free.
        """
        needs = []
        for r in requests:
            tokens = len(r.tokens) + r.params.max_tokens
            needs.append((r.model, tokens))
            if r.draft_model:
                needs.append((r.draft_model, tokens))
        self.ledger.check_request(needs)

    def compare(
        self, sides: Sequence[Side], *, interleave: bool = True
    ) -> CompareStream:
        """Stream several generations together, as one queued task.

        Args:
            sides: ``Side(model, prompt, params, draft=, speculation=)`` each, for
                models loaded on this engine; screened like ``Model.stream``.
            interleave: Step them in turns (one token each) so they stream side by
                side; False runs them one after another (undisturbed timings).

        Returns:
            A ``CompareStream`` of ``(side, Chunk)``, ``side`` indexing ``sides``;
            each side ends with a finish reason, ``"error"`` for one that failed.

        Raises:
            ValueError: As ``Model.stream`` does (``ContentBlocked`` included).
            EngineBusy: Too many requests are queued.
        """
        from engine.side_by_side import stream_side_by_side  # it builds on this module

        return stream_side_by_side(self, sides, interleave=interleave)

    @property
    def queued(self) -> tuple[int, int]:
        """``(waiting, most)``: tasks queued now and the most that may wait."""
        return self.worker.queued, self.worker.max_queue

    def memory(self, *, timeout: float | None = None) -> MemoryInfo:
        """MLX's memory use now, read on the engine thread.

        Args:
            timeout: Seconds to wait while a generation holds the thread.

        Raises:
            TimeoutError: The engine stayed busy for ``timeout`` seconds.
        """
        return self.worker.call(lambda models: memory_info()).result(timeout)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(name_or_path: str, **engine_options: Any) -> Model:
    """Load one model on an engine of its own (see ``Engine.load``)."""
    return Engine(**engine_options).load(name_or_path)
