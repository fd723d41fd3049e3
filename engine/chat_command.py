"""The `silica generate` and `silica chat` subcommands: stream answers in a terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TextIO

from engine.load_flags import add_load_flags, load_options
from engine.runtime import Engine, load
from engine.safety.flags import add_safety_flags, policy_from_args
from engine.schema import DEFAULT_MAX_TOKENS, Chunk, SamplingParams, Stats

Messages = Sequence[dict[str, Any]]
CLI_TEMPERATURE = (
    0.7  # the API defaults to 1.0 (OpenAI); a terminal reads better cooler
)
CHAT_PROMPT = ">>> "
CHAT_HELP = "commands: /reset clears the history, /exit (or Ctrl-D) quits"

GENERATE_EPILOG = """\
MODEL can be a catalog name (see `silica models list`), an MLX directory, a Hugging
Face directory or a .gguf file; catalog models and GGUF files are converted once.

The answer streams to stdout; one line of stats (prompt and cached tokens, time to
first token, prefill and decode speed, peak memory) goes to stderr.

examples:
  silica generate --model smollm2-135m-instruct --prompt "Name three rivers."
  silica generate --model models/smollm2-4bit --prompt "Hi" --system "Answer in French."
  silica generate --model ./tiny.gguf --prompt "Once upon a time" --raw --seed 1
  cat question.txt | silica generate --model qwen2.5-coder-0.5b-instruct --prompt - \\
      --temp 0 --max-tokens 200 2>/dev/null
"""

CHAT_EPILOG = """\
Each turn re-sends the whole conversation; the engine's prompt cache reuses the
earlier turns, so the stats line after each answer shows them as "cached".

in the chat:
  /reset        forget the conversation (keeps --system)
  /exit, Ctrl-D quit
  Ctrl-C        while answering: stop that answer (it is not kept); at the prompt: quit

examples:
  silica chat --model smollm2-135m-instruct
  silica chat --model qwen2.5-coder-1.5b-instruct --system "You write Python." --temp 0
"""


class TextStream(Protocol):
    """Chunks as they are generated, cancellable (``engine.ChunkStream``)."""

    def __iter__(self) -> Iterator[Chunk]: ...

    def cancel(self) -> None: ...


class Streamer(Protocol):
    """Something that streams an answer to a prompt (``engine.Model``)."""

    def stream(self, prompt: str | Messages, params: SamplingParams) -> TextStream: ...


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``silica generate``."""
    p = subparsers.add_parser(
        "generate",
        help="answer one prompt, streaming the text to stdout",
        description="Generate an answer to one prompt. By default the prompt is sent "
        "as a chat message (with --system) when the model has a chat template.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_flag(p)
    p.add_argument(
        "--prompt", required=True, help="the prompt text, or - to read it from stdin"
    )
    p.add_argument("--system", help="system message (chat template only)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as plain text, without the chat template",
    )
    add_sampling_flags(p)
    add_safety_flags(p)
    add_load_flags(p)
    p.add_argument(
        "--draft",
        metavar="M",
        help="a smaller model with the same tokenizer for speculative decoding",
    )
    p.add_argument(
        "--speculation",
        choices=["lookup", "auto"],
        help="lookup: draft from the prompt itself (n-gram lookup; no second "
        "model); auto: each round, lookup, the --draft model or neither, whichever "
        "has paid off best so far",
    )
    p.set_defaults(func=_run_generate)


def add_chat_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``silica chat``."""
    p = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="An interactive chat that keeps the conversation. Needs a model "
        "with a chat template.",
        epilog=CHAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_flag(p)
    p.add_argument("--system", help="system message sent at the start of each turn")
    add_sampling_flags(p)
    add_safety_flags(p)
    add_load_flags(p)
    p.set_defaults(func=_run_chat)


def _add_model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="catalog name, MLX or Hugging Face directory, or .gguf file",
    )


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Add the sampling flags that ``to_sampling_params`` reads."""
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="tokens to generate at most (default: %(default)s)",
    )
    g.add_argument(
        "--temperature",
        "--temp",
        type=float,
        default=CLI_TEMPERATURE,
        help="0 is greedy, up to 2 (default: %(default)s)",
    )
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus mass, (0, 1]")
    g.add_argument("--top-k", type=int, default=0, help="keep the k likeliest; 0: off")
    g.add_argument("--min-p", type=float, default=0.0, help="[0, 1]; 0: off")
    g.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="1 is off (default)"
    )
    g.add_argument("--seed", type=int, help="same seed, same answer")
    g.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end the answer at TEXT (repeatable)",
    )


def to_sampling_params(args: argparse.Namespace) -> SamplingParams:
    """Build ``SamplingParams`` from the sampling flags.

    Raises:
        ValueError: A value out of range; the message names it and the range.
    """
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop or ()),
    )


def render_stats(stats: Stats, finish_reason: str | None) -> str:
    """One line: prompt and cached tokens, speeds, peak memory, why it ended."""
    spec = ""
    if stats.acceptance_rate is not None:
        spec = (
            f"accepted {stats.acceptance_rate:.0%}, "
            f"{stats.tokens_per_forward:.2f} tok/forward, "
            f"draft {stats.draft_s:.2f} s / verify {stats.verify_s:.2f} s, "
        )
    return (
        f"[prompt {stats.prompt_tokens} tok, cached {stats.cached_tokens}, "
        f"first token {stats.ttft_s:.2f} s, prefill {stats.prefill_tps:.1f} tok/s, "
        f"decode {stats.decode_tps:.1f} tok/s ({stats.completion_tokens} tok), "
        f"{spec}peak {stats.peak_memory_gb:.2f} GB, {finish_reason}]"
    )


def _run_generate(args: argparse.Namespace) -> int:
    params = to_sampling_params(args)
    if args.raw and args.system is not None:
        raise ValueError("--system needs the chat template; drop --raw or --system.")
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not text.strip():
        raise ValueError("The prompt is empty; pass --prompt TEXT or pipe it with -.")
    engine = Engine(safety=policy_from_args(args), **load_options(args))
    model = engine.load(args.model)
    spec = {"speculation": args.speculation}
    if args.draft:
        if args.speculation == "lookup":
            raise ValueError("--speculation lookup takes no --draft; use auto.")
        spec["draft"] = engine.load(args.draft)
    prompt: str | Messages = text
    if not args.raw:
        if model.info.has_chat_template:
            prompt = to_messages([{"role": "user", "content": text}], args.system)
        elif args.system is not None:
            raise ValueError(
                f"{args.model} has no chat template, so --system cannot be sent; "
                "put the instructions in the prompt."
            )
    return generate_to(model, prompt, params, out=sys.stdout, err=sys.stderr, spec=spec)


def generate_to(
    model: Streamer,
    prompt: str | Messages,
    params: SamplingParams,
    *,
    out: TextIO,
    err: TextIO,
    spec: dict | None = None,
) -> int:
    """Stream the answer to ``out`` chunk by chunk, then one stats line to ``err``.

    ``spec`` holds ``Model.stream``'s speculation arguments (draft, speculation).

    Returns:
        0, or 1 when the engine reports an error.

    Raises:
        KeyboardInterrupt: After cancelling the generation.
    """
    stream = model.stream(prompt, params, **(spec or {}))
    try:
        _, last = write_answer(stream, out)
    except KeyboardInterrupt:
        stream.cancel()
        out.write("\n")
        raise
    out.write("\n")
    out.flush()
    return _report(last, err)


def write_answer(stream: TextStream, out: TextIO) -> tuple[str, Chunk | None]:
    """Write each chunk's text to ``out`` as it arrives (flushed).

    Returns:
        The whole text and the last chunk (the one with ``stats``).
    """
    parts: list[str] = []
    last = None
    for chunk in stream:
        if chunk.text:
            out.write(chunk.text)
            out.flush()
            parts.append(chunk.text)
        last = chunk
    return "".join(parts), last


def _report(last: Chunk | None, err: TextIO) -> int:
    """Print the stats line, or the error; 0 for a finished answer, 1 for an error."""
    if last is None or last.finish_reason == "error":
        err.write(f"error: {last.error if last else 'the stream ended early'}\n")
        return 1
    if last.stats is not None:
        err.write(render_stats(last.stats, last.finish_reason) + "\n")
    err.flush()
    return 0


def to_messages(turns: Messages, system: str | None) -> list[dict[str, Any]]:
    """The messages to send: the system message (if any), then ``turns``."""
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, *turns]


def _run_chat(args: argparse.Namespace) -> int:
    params = to_sampling_params(args)
    model = load(
        args.model,
        safety=policy_from_args(args),
        **load_options(args),
    )
    if not model.info.has_chat_template:
        raise ValueError(
            f"{args.model} has no chat template; use "
            "`silica generate --raw --prompt TEXT` for plain completion."
        )
    if sys.stdin.isatty():
        import readline  # noqa: F401 - gives input() line editing and history

    print(f"chatting with {model.name}; {CHAT_HELP}", file=sys.stderr)
    return run_chat(
        model,
        params,
        system=args.system,
        read_line=input,
        out=sys.stdout,
        err=sys.stderr,
    )


def run_chat(
    model: Streamer,
    params: SamplingParams,
    *,
    system: str | None = None,
    read_line: Callable[[str], str],
    out: TextIO,
    err: TextIO,
) -> int:
    """Read turns with ``read_line`` until /exit, EOF or Ctrl-C at the prompt.

    Each turn sends the system message and the whole history. A turn that is
    cancelled (Ctrl-C) or fails is dropped from the history.

    Returns:
        0.
    """
    history: list[dict[str, Any]] = []
    while True:
        try:
            line = read_line(CHAT_PROMPT)
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = []
            err.write("[history cleared]\n")
            continue
        if text.startswith("/"):
            err.write(f"[{CHAT_HELP}]\n")
            continue
        turn = [*history, {"role": "user", "content": text}]
        answer = _answer_turn(model, to_messages(turn, system), params, out, err)
        if answer is not None:
            history = [*turn, {"role": "assistant", "content": answer}]


def _answer_turn(
    model: Streamer,
    messages: Messages,
    params: SamplingParams,
    out: TextIO,
    err: TextIO,
) -> str | None:
    """Stream one answer; ``None`` when it was cancelled or failed."""
    stream = None
    try:
        stream = model.stream(messages, params)
        text, last = write_answer(stream, out)
    except ValueError as e:  # e.g. the conversation no longer fits the context
        err.write(f"error: {e} (/reset starts over)\n")
        return None
    except KeyboardInterrupt:
        if stream is not None:
            stream.cancel()
        out.write("\n")
        err.write("[cancelled; this answer is not kept in the history]\n")
        return None
    out.write("\n")
    out.flush()
    return text if _report(last, err) == 0 else None
