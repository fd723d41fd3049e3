"""The Gradio app: build the tabs and mount them on the OpenAI-compatible server.

``mount_ui`` is what ``silica serve`` calls (through the ``silica.ui`` entry point),
so one port serves the UI at ``/`` and the API at ``/v1``.
"""

from __future__ import annotations

import hmac
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from engine import ModelPool, default_cache_dir
from webui.arena import ArenaStore, default_db_path
from webui.audit import FlagLog
from webui.chat_tab import build_chat_tab
from webui.compare_tab import build_compare_tab
from webui.i18n import make_i18n
from webui.models_handlers import model_choices
from webui.models_tab import build_models_tab
from webui.safety_tab import build_safety_tab
from webui.settings import UISettings

CSS = """
.silica-gauge progress { height: 1.2em; }
footer { opacity: 0.8; }
"""


def build_app(pool: ModelPool, settings: UISettings, i18n: gr.I18n) -> gr.Blocks:
    """The Blocks app: Chat, Compare, Models and Safety tabs over ``pool``.

    Args:
        pool: The engine's loaded models; the UI loads more into it on demand.
        settings: How the UI behaves.
        i18n: The translations its labels use (``make_i18n()``).

    Returns:
        The app with its queue configured; mount it with ``mount_ui``.
    """
    store, flags = ArenaStore(settings.arena_db), FlagLog()
    with gr.Blocks(title="Silica", analytics_enabled=False) as demo:
        gr.Markdown(f"## Silica\n{i18n('subtitle')}")
        with gr.Tabs():
            with gr.Tab(i18n("tab_chat"), id="chat", elem_id="tab-chat"):
                chat = build_chat_tab(pool, settings, i18n, flags)
            with gr.Tab(i18n("tab_compare"), id="compare", elem_id="tab-compare"):
                compare = build_compare_tab(
                    pool, settings, i18n, store=store, flags=flags
                )
            with gr.Tab(i18n("tab_models"), id="models", elem_id="tab-models"):
                models = build_models_tab(pool, settings, i18n)
            with gr.Tab(i18n("tab_safety"), id="safety", elem_id="tab-safety"):
                build_safety_tab(pool, i18n, flags)
        pickers = [*chat.pickers, *compare.pickers, *models.pickers]

        def refresh_pickers() -> list:
            choices = model_choices(pool, settings)
            return [gr.update(choices=choices) for _ in pickers]

        demo.load(refresh_pickers, None, pickers)
        for event in models.changes:
            event.then(refresh_pickers, None, pickers)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=4)
    return demo


def password_check(password: str) -> Callable[[str, str], bool]:
    """Gradio auth that accepts any user name with ``password``."""

    def check(username: str, given: str) -> bool:
        return hmac.compare_digest(given.encode(), password.encode())

    return check


def mount_ui(
    app: FastAPI,
    pool: ModelPool,
    *,
    default_model: str,
    password: str | None = None,
    share: bool = False,
    arena_db: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: UISettings | None = None,
) -> FastAPI:
    """Mount the web UI at ``/`` of ``app`` (the ``silica.ui`` entry point).

    Args:
        app: The OpenAI-compatible server (``engine.server.make_app``).
        pool: Its models; the UI shares them, so models loaded here are served too.
        default_model: The model the pickers start on.
        password: Ask for it (any user name) before showing the UI.
        share: Also open a temporary public link through Gradio's share servers.
        arena_db: SQLite file for blind-mode votes; default in the user data dir.
        host: The address the server binds (for the share tunnel).
        port: The port the server binds.
        settings: Everything at once (tests); overrides the arguments above.

    Returns:
        ``app`` with the UI mounted. Files it serves: chat exports only.
    """
    settings = settings or UISettings(
        default_model=default_model,
        arena_db=Path(arena_db) if arena_db else default_db_path(),
        export_dir=default_cache_dir() / "webui-exports",
        search_dirs=pool.roots,
    )
    settings.export_dir.mkdir(parents=True, exist_ok=True)
    i18n = make_i18n()
    demo = build_app(pool, settings, i18n)
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        auth=password_check(password) if password else None,
        auth_message="Silica: enter the password (any user name).",
        allowed_paths=[str(settings.export_dir.resolve())],
        footer_links=["settings"],  # Settings has the language switch
        run_history=False,
        ssr_mode=False,
        i18n=i18n,
        css=CSS,
    )
    if share:
        _open_share_link(demo, host, port)
    return app


def _open_share_link(demo: gr.Blocks, host: str, port: int) -> None:
    """Ask Gradio's share server for a public link, in the background."""

    def tunnel() -> None:
        from gradio import networking

        try:
            url = networking.setup_tunnel(
                "127.0.0.1" if host in ("0.0.0.0", "::") else host,
                port,
                demo.share_token,
                None,
                None,
            )
            print(f"Silica public link: {url}", file=sys.stderr, flush=True)
        except Exception as e:  # no internet: say so and keep serving locally
            print(f"warning: no share link ({e})", file=sys.stderr, flush=True)

    threading.Thread(target=tunnel, name="silica-share", daemon=True).start()
