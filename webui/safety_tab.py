"""The Safety tab: layout and wiring only; the logic is in safety_handlers.py."""

from __future__ import annotations

import gradio as gr

from engine import ModelPool
from webui import safety_handlers as h
from webui.audit import FlagLog


def show(view: h.SafetyView) -> tuple:
    """A ``SafetyView`` as the values of ``[highlight, verdict, findings]``."""
    if view.warning:
        gr.Warning(view.warning)
    return view.highlights, view.verdict, view.findings


def build_safety_tab(pool: ModelPool, t: gr.I18n, log: FlagLog) -> None:
    """Lay out the Safety tab and wire its events (call inside ``gr.Blocks``)."""
    policy = pool.engine.safety
    gr.Markdown(h.policy_summary(policy), elem_id="safety-summary")
    with gr.Accordion(t("safety_policy"), open=False):
        gr.Dataframe(h.policy_table(policy), interactive=False, elem_id="safety-policy")
    with gr.Row():
        text = gr.Textbox(
            label=t("safety_text"), lines=5, scale=4, elem_id="safety-text"
        )
        with gr.Column(scale=1):
            role = gr.Radio(list(h.ROLES), value="prompt", label=t("safety_role"))
            check = gr.Button(
                t("safety_check"), variant="primary", elem_id="safety-check"
            )
    highlight = gr.HighlightedText(
        label=t("safety_findings"),
        show_legend=True,
        combine_adjacent=True,
        elem_id="safety-highlight",
    )
    verdict = gr.Markdown(elem_id="safety-verdict")
    findings = gr.Dataframe(interactive=False, wrap=True, elem_id="safety-findings")
    with gr.Accordion(t("safety_audit"), open=True):
        audit = gr.Dataframe(
            log.table, interactive=False, wrap=True, elem_id="safety-audit"
        )  # read again on each page load
        refresh = gr.Button(t("refresh"), size="sm", elem_id="safety-refresh")

    def run_check(text: str, role: str) -> tuple:
        return show(h.check(policy, log, text, role))

    for trigger in (check.click, text.submit):
        trigger(run_check, [text, role], [highlight, verdict, findings]).then(
            log.table, None, [audit]
        )
    refresh.click(log.table, None, [audit])
