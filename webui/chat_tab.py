"""The Chat tab: layout and wiring only; the logic is in chat_handlers.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from engine import ModelPool
from webui import chat_handlers as h
from webui.audit import FlagLog
from webui.generation import describe
from webui.models_handlers import model_choices
from webui.presets import DEFAULT_PRESET, PRESETS, preset_choices
from webui.settings import UISettings

ENGINE = {"concurrency_id": "engine", "concurrency_limit": 1}


@dataclass(frozen=True)
class ChatTab:
    """The components other tabs refresh (model pickers)."""

    pickers: tuple[gr.Dropdown, ...]


def show(view: h.ChatView) -> tuple:
    """A ``ChatView`` as the values of ``[chatbot, status, textbox]``."""
    if view.warning:
        gr.Warning(view.warning)
    textbox = gr.skip() if view.textbox is None else view.textbox
    return view.messages, view.status, textbox


def speculation_radio(t: gr.I18n, **kwargs) -> gr.Radio:
    choices = [
        (t("spec_off"), "off"),
        (t("spec_lookup"), "lookup"),
        (t("spec_draft"), "draft"),
        (t("spec_auto"), "auto"),
    ]
    return gr.Radio(choices, value="off", label=t("speculation"), **kwargs)


def build_chat_tab(
    pool: ModelPool, settings: UISettings, t: gr.I18n, flags: FlagLog
) -> ChatTab:
    """Lay out the Chat tab and wire its events (call inside ``gr.Blocks``)."""
    choices = model_choices(pool, settings)
    c = {"session": gr.State(lambda: h.ChatSession())}  # one per browser tab
    with gr.Row():
        c["model"] = gr.Dropdown(
            choices,
            value=settings.default_model,
            label=t("model"),
            allow_custom_value=True,
            scale=3,
            elem_id="chat-model",
        )
        c["preset"] = gr.Dropdown(
            preset_choices(), value=DEFAULT_PRESET, label=t("preset"), scale=2
        )
    with gr.Row():
        with gr.Column(scale=3):
            c.update(_conversation(t))
        with gr.Column(scale=1), gr.Accordion(t("settings"), open=True):
            c.update(_controls(settings, t, choices))
    _wire(pool, settings, c, flags)
    return ChatTab(pickers=(c["model"], c["draft"]))


def _conversation(t: gr.I18n) -> dict[str, gr.components.Component]:
    c = {"chatbot": gr.Chatbot(show_label=False, height=460, elem_id="chat-chatbot")}
    with gr.Row():
        c["textbox"] = gr.Textbox(
            placeholder=t("message_placeholder"),
            show_label=False,
            lines=2,
            scale=6,
            elem_id="chat-input",
        )
        c["send"] = gr.Button(
            t("send"), variant="primary", scale=1, elem_id="chat-send"
        )
        c["stop"] = gr.Button(
            t("stop_button"), variant="stop", scale=1, elem_id="chat-stop"
        )
    with gr.Row():
        for key in ("regenerate", "edit", "clear", "export_json", "export_md"):
            c[key] = gr.Button(t(key), size="sm", elem_id=f"chat-{key}")
    c["status"] = gr.Markdown(elem_id="chat-status")
    c["export_file"] = gr.File(
        label=t("export_file"), interactive=False, visible=False, elem_id="chat-export"
    )
    return c


def _controls(
    settings: UISettings, t: gr.I18n, choices: list[str]
) -> dict[str, gr.components.Component]:
    return {
        "system": gr.Textbox(
            PRESETS[DEFAULT_PRESET].system, label=t("system"), lines=3
        ),
        "temperature": gr.Slider(
            0,
            2,
            value=0.7,
            step=0.05,
            label=t("temperature"),
            elem_id="chat-temperature",
        ),
        "top_p": gr.Slider(0.05, 1, value=1.0, step=0.05, label=t("top_p")),
        "top_k": gr.Slider(0, 200, value=0, step=1, label=t("top_k")),
        "max_tokens": gr.Slider(
            1,
            4096,
            value=settings.max_tokens,
            step=1,
            label=t("max_tokens"),
            elem_id="chat-max-tokens",
        ),
        "seed": gr.Number(-1, precision=0, label=t("seed")),
        "stops": gr.Textbox(label=t("stop")),
        "speculation": speculation_radio(t, elem_id="chat-speculation"),
        "draft": gr.Dropdown(
            choices,
            value=None,
            label=t("draft"),
            allow_custom_value=True,
            visible=False,
        ),
    }


CONTROLS = (
    "model",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "stops",
    "speculation",
    "draft",
)


def _wire(pool: ModelPool, settings: UISettings, c: dict, flags: FlagLog) -> None:
    session, controls = c["session"], [c[key] for key in CONTROLS]
    views = [c["chatbot"], c["status"], c["textbox"]]

    def respond(session: h.ChatSession, *values):
        controls = h.ChatControls(*values)
        replies = h.respond(pool, session, controls, settings=settings, flags=flags)
        for view in replies:
            yield show(view)

    def add_turn(session: h.ChatSession, text: str) -> tuple:
        return show(h.add_user_turn(session, text))

    for trigger in (c["textbox"].submit, c["send"].click):
        trigger(add_turn, [session, c["textbox"]], views).then(
            respond, [session, *controls], views, **ENGINE
        )
    c["regenerate"].click(lambda s: show(h.retry_last(s)), [session], views).then(
        respond, [session, *controls], views, **ENGINE
    )
    c["stop"].click(h.stop, [session], [c["status"]], queue=False)
    c["edit"].click(lambda s: show(h.edit_last(s)), [session], views)
    for clear in (c["clear"].click, c["chatbot"].clear):  # the chatbot's bin icon too
        clear(lambda s: show(h.clear(s)), [session], views)
    for fmt in ("json", "md"):
        c[f"export_{fmt}"].click(
            partial(_export, settings, fmt), [session, c["system"]], [c["export_file"]]
        )
    c["preset"].change(
        _apply_preset, [c["preset"]], [c["system"], c["textbox"], c["speculation"]]
    )
    c["speculation"].change(
        lambda mode: gr.update(visible=mode in ("draft", "auto")),
        [c["speculation"]],
        [c["draft"]],
    )


def _export(settings: UISettings, fmt: str, session: h.ChatSession, system: str):
    try:
        path = h.export_chat(session, system, fmt, directory=settings.export_dir)
    except ValueError as e:
        gr.Warning(describe(e))
        return gr.skip()
    return gr.update(value=str(path), visible=True)


def _apply_preset(key: str) -> tuple:
    preset = PRESETS.get(key)
    if preset is None:
        return gr.skip(), gr.skip(), gr.skip()
    return preset.system, preset.template, preset.speculation
