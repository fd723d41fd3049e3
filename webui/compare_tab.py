"""The Compare tab: layout and wiring only; the logic is in compare_handlers.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from engine import ModelPool
from webui import compare_handlers as h
from webui.arena import ArenaStore
from webui.audit import FlagLog
from webui.chat_tab import ENGINE, speculation_radio
from webui.metrics import empty_table
from webui.models_handlers import model_choices
from webui.settings import MAX_SIDES, UISettings

SIDE_FIELDS = 4  # model, temperature, speculation, draft
CHARTS = {
    "tokens_per_s": "chart_tps",
    "ttft_s": "chart_ttft",
    "peak_memory_gb": "chart_memory",
    "output_tokens": "chart_length",
}


@dataclass(frozen=True)
class CompareTab:
    """The components other tabs refresh (model pickers)."""

    pickers: tuple[gr.Dropdown, ...]


def build_compare_tab(
    pool: ModelPool,
    settings: UISettings,
    t: gr.I18n,
    *,
    store: ArenaStore,
    flags: FlagLog,
) -> CompareTab:
    """Lay out the Compare tab and wire its events (call inside ``gr.Blocks``)."""
    c: dict = {"session": gr.State(lambda: h.CompareSession())}
    c["prompt"] = gr.Textbox(label=t("prompt"), lines=3, elem_id="compare-prompt")
    with gr.Row():
        c["count"] = gr.Radio([2, 3, 4], value=2, label=t("sides"))
        c["mode"] = gr.Radio(
            [(t("mode_together"), "together"), (t("mode_sequential"), "sequential")],
            value="together",
            label=t("run_mode"),
        )
        c["blind"] = gr.Checkbox(label=t("blind"), elem_id="compare-blind")
    with gr.Accordion(t("settings"), open=False):
        c["system"] = gr.Textbox(label=t("system"), lines=2)
        with gr.Row():
            c["max_tokens"] = gr.Slider(
                1, 4096, value=settings.max_tokens, step=1, label=t("max_tokens")
            )
            c["seed"] = gr.Number(-1, precision=0, label=t("seed"))
    with gr.Row():
        c["columns"], c["sides"], c["texts"] = _sides(pool, settings, t)
    with gr.Row():
        c["run"] = gr.Button(t("run"), variant="primary", elem_id="compare-run")
        c["stop"] = gr.Button(t("stop_button"), variant="stop", elem_id="compare-stop")
    c["status"] = gr.Markdown(elem_id="compare-status")
    with gr.Row(visible=False, elem_id="compare-votes") as c["votes"]:
        for winner in h.VOTES:
            c[f"vote_{winner}"] = gr.Button(
                t(f"vote_{winner}"), elem_id=f"vote-{winner}"
            )
    c.update(_results(t, store))
    _wire(pool, settings, c, store=store, flags=flags)
    pickers = [side[0] for side in c["sides"]] + [side[3] for side in c["sides"]]
    return CompareTab(pickers=tuple(pickers))


def _sides(pool: ModelPool, settings: UISettings, t: gr.I18n) -> tuple:
    choices = model_choices(pool, settings)
    columns, sides, texts = [], [], []
    for i in range(MAX_SIDES):
        with gr.Column(visible=i < 2, min_width=240) as column:
            model = gr.Dropdown(
                choices,
                value=settings.default_model,
                label=t("model"),
                allow_custom_value=True,
                elem_id=f"compare-model-{i}",
            )
            temperature = gr.Slider(
                0,
                2,
                value=0.7,
                step=0.05,
                label=t("temperature"),
                elem_id=f"compare-temperature-{i}",
            )
            speculation = speculation_radio(t, elem_id=f"compare-speculation-{i}")
            draft = gr.Dropdown(
                choices, label=t("draft"), allow_custom_value=True, visible=False
            )
            text = gr.Textbox(
                label=f"Side {i + 1}",
                lines=10,
                interactive=False,
                elem_id=f"compare-out-{i}",
            )
        speculation.change(
            lambda mode: gr.update(visible=mode in ("draft", "auto")),
            [speculation],
            [draft],
        )
        columns.append(column)
        sides.append((model, temperature, speculation, draft))
        texts.append(text)
    return columns, sides, texts


def _results(t: gr.I18n, store: ArenaStore) -> dict:
    c: dict = {
        "table": gr.Dataframe(
            empty_table(),
            label=t("metrics"),
            interactive=False,
            elem_id="compare-table",
        )
    }
    with gr.Row(elem_id="compare-charts"):
        c["plots"] = [
            gr.BarPlot(
                empty_table(),
                x="side",
                y=column,
                label=t(key),
                y_lim=[0, None],  # bars start at zero, not at the smallest value
                height=220,
                elem_id=f"chart-{column}",
            )
            for column, key in CHARTS.items()
        ]
    with gr.Accordion(t("leaderboard"), open=True):
        c["board"] = gr.Dataframe(
            partial(h.leaderboard_table, store),  # read again on each page load
            interactive=False,
            elem_id="leaderboard",
        )
    return c


def show(view: h.CompareView) -> tuple:
    """A ``CompareView`` as the values of ``outputs(c)``."""
    if view.warning:
        gr.Warning(view.warning)
    texts = [
        gr.update(label=label)
        if view.texts is None
        else gr.update(value=text, label=label)
        for text, label in zip(view.texts or view.labels, view.labels, strict=True)
    ]
    table = gr.skip() if view.table is None else view.table
    plots = [table] * len(CHARTS)
    return (*texts, table, *plots, view.status, gr.update(visible=view.voting))


def outputs(c: dict) -> list:
    return [*c["texts"], c["table"], *c["plots"], c["status"], c["votes"]]


def _wire(
    pool: ModelPool,
    settings: UISettings,
    c: dict,
    *,
    store: ArenaStore,
    flags: FlagLog,
) -> None:
    session = c["session"]
    shared = [c[k] for k in ("prompt", "system", "max_tokens", "seed", "count")]
    inputs = [session, *shared, c["mode"], c["blind"], *sum(map(list, c["sides"]), [])]

    def run(session: h.CompareSession, *values):
        controls = h.CompareControls(
            *values[:5], interleave=values[5] == "together", blind=bool(values[6])
        )
        raw = values[7:]
        sides = [
            h.SideControls(*raw[i : i + SIDE_FIELDS])
            for i in range(0, len(raw), SIDE_FIELDS)
        ]
        replies = h.run_compare(
            pool, session, controls, sides, settings=settings, flags=flags
        )
        for view in replies:
            yield show(view)

    c["run"].click(run, inputs, outputs(c), **ENGINE)
    c["stop"].click(
        lambda s: "Stopping…" if s.stop() else "", [session], [c["status"]], queue=False
    )
    for winner in h.VOTES:
        c[f"vote_{winner}"].click(
            partial(_vote, store, winner), [session], outputs(c)
        ).then(lambda: h.leaderboard_table(store), None, [c["board"]])
    c["count"].change(
        lambda n: [gr.update(visible=i < int(n)) for i in range(MAX_SIDES)],
        [c["count"]],
        c["columns"],
    )
    c["blind"].change(
        lambda blind: gr.update(value=2) if blind else gr.skip(),
        [c["blind"]],
        [c["count"]],
    )


def _vote(store: ArenaStore, winner: str, session: h.CompareSession) -> tuple:
    return show(h.vote(store, session, winner))
