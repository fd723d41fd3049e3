"""`silica serve`: load models on one engine and serve the OpenAI-compatible API."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from convert import DEFAULT_MODEL
from engine.runtime import Engine
from engine.worker import DEFAULT_MAX_QUEUE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
API_KEY_ENV = "SILICA_API_KEY"
NAME = re.compile(r"[A-Za-z0-9][\w.:\-]*")

SERVE_EPILOG = f"""\
M is a catalog name (see `silica models list`), an MLX or Hugging Face directory, or
a .gguf file; NAME=M serves it under NAME. Clients pass that name as `model`: the
catalog name, else the file or directory name. Default: {DEFAULT_MODEL}.

The API key can also come from ${API_KEY_ENV}, which keeps it out of `ps`.

examples:
  silica serve
  silica serve --model smollm2-135m-instruct --port 8000
  silica serve --model coder=qwen2.5-coder-0.5b-instruct --model ./models/my-4bit
  curl http://127.0.0.1:8080/v1/chat/completions \\
    -d '{{"model": "{DEFAULT_MODEL}",
         "messages": [{{"role": "user", "content": "Hi"}}]}}'
"""


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``silica serve``."""
    p = subparsers.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models and "
        "/health. Requests queue on one engine and run one at a time.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="M",
        help="a model to serve; repeat for several (see below)",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (%(default)s)")
    p.add_argument(
        "--port", type=_int_from(1, 65535), default=DEFAULT_PORT, help="(%(default)s)"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--max-queue",
        type=_int_from(1),
        default=DEFAULT_MAX_QUEUE,
        help="requests waiting at most; more get 503 (%(default)s)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=_int_from(1),
        help="largest request body; larger get 413 (default: 1 MiB)",
    )
    p.set_defaults(func=run_serve)


def _int_from(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high or 'inf'}]")
        return value

    return parse


def parse_model_flag(flag: str) -> tuple[str, str]:
    """``NAME=SRC`` or ``SRC`` -> ``(name, src)``; a bare path is served by its name."""
    name, sep, src = flag.partition("=")
    if sep and NAME.fullmatch(name) and not Path(flag).exists():
        return name, src
    path = Path(flag)
    if path.exists():
        return (path.stem if path.suffix == ".gguf" else path.resolve().name), flag
    return flag, flag


def run_serve(args: argparse.Namespace) -> int:
    """Load the models and serve until interrupted.

    Returns:
        0 after a clean shutdown.

    Raises:
        ValueError: Two models share a name, or a model cannot be found.
    """
    import uvicorn  # the web stack loads only for this command

    from engine.server import ServerSettings, make_app

    specs = [parse_model_flag(m) for m in args.model or [DEFAULT_MODEL]]
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Two --model flags share a name: {names}; use NAME=M.")
    settings = ServerSettings(api_key=args.api_key)
    if args.max_body_bytes is not None:
        settings = replace(settings, max_body_bytes=args.max_body_bytes)
    if not _is_loopback(args.host) and settings.api_key is None:
        print(
            f"warning: serving on {args.host} without --api-key; anyone who can "
            "reach this port can use it",
            file=sys.stderr,
        )
    with Engine(max_queue=args.max_queue) as engine:
        models = {}
        for name, src in specs:
            print(f"loading {src} as {name!r}", file=sys.stderr)
            models[name] = engine.load(src, name=name)
        app = make_app(engine, models, settings)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
