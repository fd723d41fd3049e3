"""`silica serve`: load models on one engine; serve the OpenAI API and the web UI.

The web UI is a plugin: ``webui`` registers itself under the ``silica.ui`` entry
point, so the engine never imports it and runs without it (``--no-ui`` or a bare
install serve the API alone).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from convert import DEFAULT_MODEL
from engine import fast_blas
from engine.distributed import add_distributed_flags, join_cluster
from engine.load_flags import add_load_flags, load_options
from engine.model_pool import DEFAULT_MODEL_ROOTS, ModelPool, model_name
from engine.runtime import Engine
from engine.safety.flags import add_safety_flags, policy_from_args
from engine.server_settings import ServerSettings, hosts_for, is_loopback
from engine.worker import DEFAULT_MAX_QUEUE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
API_KEY_ENV = "SILICA_API_KEY"
UI_PASSWORD_ENV = "SILICA_UI_PASSWORD"
UI_ENTRY_POINTS = "silica.ui"
SHARE_HOSTS = "*.gradio.live"  # the names Gradio's share servers hand out
NAME = re.compile(r"[A-Za-z0-9][\w.:\-]*")

SERVE_EPILOG = f"""\
M is a catalog name (see `silica models list`), an MLX or Hugging Face directory, or
a .gguf file; NAME=M serves it under NAME. Clients pass that name as `model`: the
catalog name, else the file or directory name. Default: {DEFAULT_MODEL}.

The web UI is served at / and the API at /v1 on the same port. The API key and
the UI password can also come from ${API_KEY_ENV} and ${UI_PASSWORD_ENV}, which
keeps them out of `ps`. Bound to anything but loopback (or with --share) the
server refuses to start without an API key unless --insecure-no-api-key is given.
Requests (the UI's pickers) load only models in the --model-root folders or
catalog models already pulled; they never download.

examples:
  silica serve
  silica serve --no-ui
  silica serve --host 0.0.0.0 --ui-password "$PW" --api-key "$KEY"
  silica serve --host 0.0.0.0 --api-key "$KEY" --allowed-host silica.lan
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
        help="serve the web UI and an OpenAI-compatible HTTP API",
        description="Serve the web UI at / and /v1/chat/completions, "
        "/v1/completions, /v1/models and /health. Requests queue on one engine.",
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
        "--insecure-no-api-key",
        action="store_true",
        help="serve beyond loopback without an API key (anyone who can reach the "
        "port can use the API)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name clients may use in the Host header besides the bound address "
        "(and localhost on loopback); '*.example.com' for subdomains, '*' for any "
        "(behind a proxy that checks it); repeatable",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (https://app.example) call the API; "
        "repeatable (default: no CORS)",
    )
    _add_limit_flags(p)
    _add_ui_flags(p)
    add_distributed_flags(p)
    p.set_defaults(func=run_serve)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-root",
        action="append",
        type=Path,
        metavar="DIR",
        help="a folder requests may load models from; repeatable (default: "
        f"{', '.join(str(r) for r in DEFAULT_MODEL_ROOTS)}; the cache always counts)",
    )
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        metavar="GB",
        help="memory the weights and KV caches may take; loads and requests beyond "
        "it are refused (default: MLX's recommended working set on Metal, else 75%% "
        "of RAM)",
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


def _add_ui_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-ui", action="store_true", help="serve the API only")
    add_safety_flags(p)
    add_load_flags(p)
    p.add_argument(
        "--share",
        action="store_true",
        help="also publish a temporary public link through Gradio's share servers "
        "(needs the internet; exposes the API as well)",
    )
    p.add_argument(
        "--ui-password",
        default=os.environ.get(UI_PASSWORD_ENV) or None,
        help=f"password for the UI, any user name (default: ${UI_PASSWORD_ENV})",
    )
    p.add_argument(
        "--arena-db",
        metavar="PATH",
        help="SQLite file for blind-mode votes (default: in the user data directory)",
    )


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
    return model_name(flag), flag


def run_serve(args: argparse.Namespace) -> int:
    """Load the models and serve until interrupted.

    Returns:
        0 after a clean shutdown.

    Raises:
        ValueError: Two models share a name, or a model cannot be found.
    """
    import uvicorn  # the web stack loads only for this command

    from engine.server import make_app

    specs = [parse_model_flag(m) for m in args.model or [DEFAULT_MODEL]]
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Two --model flags share a name: {names}; use NAME=M.")
    settings = settings_from_args(args)
    _check_exposure(args, settings.api_key)
    cluster = join_cluster(args)  # None without --distributed
    if cluster is not None and not cluster.is_leader:
        return cluster.follow(specs[0][1])  # ranks > 0 serve nothing
    budget = args.memory_budget_gb
    engine = Engine(
        max_queue=args.max_queue,
        safety=policy_from_args(args),
        **load_options(args),
        memory_budget=None if budget is None else int(budget * 1e9),
    )
    with engine, cluster or nullcontext():
        # With --distributed the first model is sharded; the rest load on rank 0.
        sharded = {}
        if cluster is not None:
            sharded[names[0]] = cluster.load(engine, specs[0][1], name=names[0])
        pool = ModelPool(engine, sharded, roots=args.model_root or DEFAULT_MODEL_ROOTS)
        for name, src in specs:
            print(f"loading {src} as {name!r}", file=sys.stderr)
            info = (sharded.get(name) or pool.load(src, name=name)).info
            print(
                f"  {info.stored_format} weights, computing in {info.compute_format} "
                f"({info.format_reason}); BLAS: {fast_blas.in_use()}",
                file=sys.stderr,
            )
        app = make_app(engine, pool, settings)
        ui = None if args.no_ui else _find_ui()
        if ui is not None:
            app = ui(app, pool, **_ui_options(args, names[0]))
        _print_addresses(args, ui is not None)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The HTTP server's settings from ``silica serve``'s flags."""
    hosts, any_ip = hosts_for(args.host, tuple(args.allowed_host))
    if args.share:  # Gradio's share tunnel forwards its public name as the Host
        hosts += (SHARE_HOSTS,)
    settings = ServerSettings(
        api_key=args.api_key,
        allowed_hosts=hosts,
        any_ip_host=any_ip,
        cors_origins=tuple(args.cors_origin),
    )
    if args.max_body_bytes is not None:
        settings = replace(settings, max_body_bytes=args.max_body_bytes)
    return settings


def _find_ui() -> Callable[..., Any] | None:
    """The web UI's ``mount`` function, if a package registered one."""
    for entry in entry_points(group=UI_ENTRY_POINTS):
        return entry.load()
    print(
        "warning: no web UI is installed (reinstall silica); serving the API only",
        file=sys.stderr,
    )
    return None


def _ui_options(args: argparse.Namespace, default_model: str) -> dict[str, Any]:
    return {
        "default_model": default_model,
        "password": args.ui_password,
        "share": args.share,
        "arena_db": args.arena_db,
        "host": args.host,
        "port": args.port,
    }


def _check_exposure(args: argparse.Namespace, api_key: str | None) -> None:
    """Refuse to serve beyond loopback without an API key, unless told to."""
    exposed = args.share or not is_loopback(args.host)
    where = "a public share link" if args.share else args.host
    if exposed and api_key is None:
        if not args.insecure_no_api_key:
            raise ValueError(
                f"Refusing to serve on {where} without an API key: anyone who can "
                f"reach it could use the API. Give --api-key KEY (or ${API_KEY_ENV}),"
                " or --insecure-no-api-key to accept that."
            )
        print(
            f"warning: serving on {where} without --api-key; anyone who can "
            "reach it can use the API",
            file=sys.stderr,
        )
    if exposed and not args.no_ui and args.ui_password is None:
        print(
            f"warning: serving the UI on {where} without --ui-password",
            file=sys.stderr,
        )


def _print_addresses(args: argparse.Namespace, ui: bool) -> None:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://{host}:{args.port}"
    if ui:
        print(f"Silica web UI: {base}/", file=sys.stderr, flush=True)
    print(f"Silica API:    {base}/v1 (OpenAI-compatible)", file=sys.stderr, flush=True)
