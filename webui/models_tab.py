"""The Models tab: layout and wiring only; the logic is in models_handlers.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import gradio as gr

from engine import ModelPool
from webui import models_handlers as h
from webui.generation import describe
from webui.settings import UISettings

STORE = {"concurrency_id": "store", "concurrency_limit": 1}  # one pull/convert at once
BITS = [h.KEEP_BITS, "2", "3", "4", "5", "6", "8"]
DTYPES = [h.AUTO_DTYPE, "float16", "bfloat16", "float32"]


@dataclass(frozen=True)
class ModelsTab:
    """Model pickers, and the events after which every tab's pickers refresh."""

    pickers: tuple[gr.Dropdown, ...]
    changes: tuple  # event dependencies that load, unload, pull or convert


def build_models_tab(pool: ModelPool, settings: UISettings, t: gr.I18n) -> ModelsTab:
    """Lay out the Models tab and wire its events (call inside ``gr.Blocks``)."""
    c: dict = {
        "gauge": gr.HTML(
            partial(h.memory_gauge, pool, settings),  # called on each page load
            label=t("memory"),
            elem_id="models-gauge",
        )
    }
    with gr.Row():
        c["picker"] = gr.Dropdown(
            h.model_choices(pool, settings),
            label=t("model"),
            allow_custom_value=True,
            scale=4,
            elem_id="models-picker",
        )
        c["load"] = gr.Button(t("load"), variant="primary", elem_id="models-load")
        c["unload"] = gr.Button(t("unload"), elem_id="models-unload")
        c["refresh"] = gr.Button(t("refresh"), elem_id="models-refresh")
    c["status"] = _status(t, "models-status")
    c["loaded"] = gr.Dataframe(
        partial(h.loaded_table, pool), label=t("loaded"), interactive=False
    )
    c["stored"] = gr.Dataframe(
        partial(h.models_table, pool, settings),
        label=t("stored"),
        interactive=False,
        wrap=True,
        elem_id="models-stored",
    )
    with gr.Accordion(t("pull"), open=False):
        with gr.Row():
            c["catalog"] = gr.Dropdown(h.catalog(), label=t("model"), scale=3)
            c["pull"] = gr.Button(t("pull_button"), elem_id="models-pull")
        c["pull_status"] = _status(t, "models-pull-status")
    with gr.Accordion(t("convert"), open=False):
        with gr.Row():
            c["src"] = gr.Textbox(label=t("convert_src"), scale=3)
            c["out"] = gr.Textbox(label=t("convert_out"), scale=3)
        with gr.Row():
            c["bits"] = gr.Dropdown(BITS, value=h.KEEP_BITS, label=t("convert_bits"))
            c["dtype"] = gr.Dropdown(
                DTYPES, value=h.AUTO_DTYPE, label=t("convert_dtype")
            )
            c["force"] = gr.Checkbox(label=t("convert_force"))
            c["convert"] = gr.Button(t("convert_button"), elem_id="models-convert")
        c["convert_status"] = _status(t, "models-convert-status")
    return ModelsTab(pickers=(c["picker"],), changes=_wire(pool, settings, c))


def _wire(pool: ModelPool, settings: UISettings, c: dict) -> tuple:
    views = [c["gauge"], c["loaded"], c["stored"]]

    def refresh() -> tuple:
        return (
            h.memory_gauge(pool, settings),
            h.loaded_table(pool),
            h.models_table(pool, settings),
        )

    actions = {
        "load": (partial(h.load, pool), [c["picker"]], c["status"]),
        "unload": (partial(h.unload, pool), [c["picker"]], c["status"]),
        "pull": (h.pull, [c["catalog"]], c["pull_status"]),
        "convert": (
            partial(h.convert, settings=settings),
            [c[k] for k in ("src", "out", "bits", "dtype", "force")],
            c["convert_status"],
        ),
    }
    changes = []
    for key, (action, inputs, status) in actions.items():
        event = c[key].click(
            _with_progress(action), inputs, [status], show_progress="full", **STORE
        )
        changes.append(event.then(refresh, None, views))
    c["refresh"].click(refresh, None, views)
    return tuple(changes)


def _status(t: gr.I18n, elem_id: str) -> gr.Textbox:
    """A read-only line for results; progress bars show over it while work runs."""
    return gr.Textbox(label=t("status"), interactive=False, elem_id=elem_id)


def _with_progress(action: Callable[..., str]) -> Callable[..., str]:
    """Run ``action``; show tqdm bars as a progress bar and errors as a warning."""

    # Gradio finds a Progress only among positional parameters, so it comes first.
    def run(progress=gr.Progress(track_tqdm=True), *values) -> str:  # noqa: B008
        try:
            return action(*values)
        except Exception as e:  # shown to the user; the tab keeps working
            gr.Warning(describe(e))
            return f"⚠ {describe(e)}"

    return run
