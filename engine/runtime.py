"""The Python API every surface calls: `Engine` owns the worker, `Model` generates."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
from jinja2 import TemplateError
from mlx.utils import tree_flatten
from mlx_lm.utils import get_total_parameters

from convert import load_checked, model_dir
from engine.decode import LoadedModel
from engine.schema import Choice, Chunk, Completion, ModelInfo, SamplingParams, Usage
from engine.speculative import check_draft
from engine.worker import EngineDied, EngineWorker, GenerateRequest, Job

Messages = Sequence[dict[str, Any]]
Prompt = str | Messages | Sequence[int]  # raw text, chat messages, or token ids
POLL_S = 0.5  # how often a waiting reader checks that the worker is alive


class ChunkStream:
    """An iterator of ``Chunk`` that any thread may cancel.

    ``cancel()`` (or ``close()``) stops the generation within one token; the stream
    then ends with a chunk whose ``finish_reason`` is ``"cancelled"``.
    """

    def __init__(self, job: Job, worker: EngineWorker) -> None:
        self._job, self._worker, self._done = job, worker, False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Chunk:
        while not self._done:
            try:
                chunk = self._job.out.get(timeout=POLL_S)
            except queue.Empty:
                if not self._worker.is_alive():
                    raise EngineDied(
                        "The engine thread stopped mid-generation."
                    ) from None
                continue
            if chunk is None:
                self._done = True
                break
            return chunk
        raise StopIteration

    def cancel(self) -> None:
        """Stop the generation; safe to call from any thread, more than once."""
        self._job.cancel.set()

    close = cancel


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
                the text so far (no second model); ``None`` decodes plainly.
            **kwargs: Fields of ``SamplingParams`` (max_tokens, temperature, ...).

        Returns:
            An iterator of ``Chunk``; the last chunk of each of the ``n`` completions
            has ``finish_reason`` and ``stats``. Cancel it from any thread.

        Raises:
            ValueError: Bad parameters, a prompt that does not fit the context, or a
                draft whose vocabulary differs.
            EngineBusy: Too many requests are queued.
        """
        params = params or SamplingParams(**kwargs)
        tokens = self.encode(prompt)
        self._check_fits(tokens, params)
        request = GenerateRequest(
            self.name, tuple(tokens), params, **self._speculation(draft, speculation)
        )
        return ChunkStream(self._engine.worker.generate(request), self._engine.worker)

    def _speculation(self, draft: Model | None, speculation: str | None) -> dict:
        if speculation not in (None, "lookup", "draft"):
            raise ValueError(
                f"speculation must be 'lookup' or 'draft', got {speculation!r}."
            )
        if draft is None:
            if speculation == "draft":
                raise ValueError("speculation='draft' needs draft=<a loaded Model>.")
            return {"speculation": speculation}
        if draft._engine is not self._engine:
            raise ValueError("Load the draft model on the same Engine as the target.")
        check_draft(self._tokenizer, draft._tokenizer)
        return {"speculation": "draft", "draft_model": draft.name}

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
        return _completion(parts)

    def _check_fits(self, tokens: list[int], params: SamplingParams) -> None:
        context = self.info.context_length
        if len(tokens) >= context:
            raise ValueError(
                f"The prompt has {len(tokens)} tokens; {self.name} takes at most "
                f"{context - 1} before generating. Shorten the prompt."
            )
        vocab = self._tokenizer.vocab_size
        if bad := [t for t, _ in params.logit_bias if t >= vocab]:
            raise ValueError(f"logit_bias names token ids {bad} beyond the vocabulary.")


def _is_token_ids(prompt: object) -> bool:
    ids = isinstance(prompt, list | tuple)
    return ids and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def _completion(parts: dict[int, list[Chunk]]) -> Completion:
    choices, stats = [], []
    for index, chunks in parts.items():
        last = chunks[-1]
        if last.finish_reason == "error":
            raise RuntimeError(f"Generation failed: {last.error}")
        choices.append(
            Choice(
                index=index,
                text="".join(c.text for c in chunks),
                tokens=tuple(c.token for c in chunks if c.token is not None),
                finish_reason=last.finish_reason,
                logprobs=tuple(c.logprob for c in chunks if c.logprob is not None),
            )
        )
        stats.append(last.stats)
    usage = Usage(
        prompt_tokens=stats[0].prompt_tokens,
        completion_tokens=sum(s.completion_tokens for s in stats),
        cached_tokens=stats[0].cached_tokens,
    )
    return Completion(tuple(choices), usage, tuple(stats))


class Engine:
    """Owns the engine thread and the models it holds; use as a context manager."""

    def __init__(self, **worker_options: Any) -> None:
        self.worker = EngineWorker(**worker_options)
        self.worker.start()
        self._finalizer = weakref.finalize(self, self.worker.stop)

    def load(self, name_or_path: str, *, name: str | None = None) -> Model:
        """Load a model: a catalog name, an MLX or Hugging Face directory, a GGUF file.

        Catalog models and GGUF files are converted once into the cache, keeping their
        own quantization.

        Raises:
            ModelFileError: A model file is malformed; ValueError for a bad name.
        """
        path = model_dir(name_or_path)
        name = name or name_or_path
        loaded = self.worker.call(
            lambda models: _load_into(models, name, path)
        ).result()
        return Model(self, name, loaded.info, loaded.tokenizer)

    def unload(self, name: str) -> None:
        """Free a model's memory."""
        self.worker.call(lambda models: models.pop(name, None)).result()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_into(models: dict[str, LoadedModel], name: str, path: Path) -> LoadedModel:
    """Runs on the worker: load lazily, evaluate, describe."""
    model, tokenizer, config = load_checked(path)
    mx.eval(model.parameters())
    nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    parameters = get_total_parameters(model)
    context = config.get("max_position_embeddings") or tokenizer.model_max_length
    info = ModelInfo(
        name=name,
        path=str(path),
        parameters=parameters,
        bits=nbytes * 8 / max(parameters, 1),
        memory_gb=nbytes / 1e9,
        context_length=int(min(context, 1 << 20)),
        has_chat_template=getattr(tokenizer, "chat_template", None) is not None,
    )
    models[name] = LoadedModel(model, tokenizer, config, info)
    return models[name]


def load(name_or_path: str, **engine_options: Any) -> Model:
    """Load one model on an engine of its own (see ``Engine.load``)."""
    return Engine(**engine_options).load(name_or_path)
