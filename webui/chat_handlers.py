"""The Chat tab's logic: one conversation per browser tab, streamed from the engine.

Plain generators of plain values (no Gradio): ``chat_tab.py`` wires them to
components and turns ``ChatView.warning`` into a toast.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine import ChunkStream, EngineDied, ModelPool, Stats, Verdict, moderate
from webui.audit import FlagLog
from webui.generation import (
    Throttle,
    describe,
    queue_status,
    speculation_args,
    to_params,
)
from webui.metrics import stats_line
from webui.settings import UISettings


@dataclass
class Turn:
    """A user message and the answer to it (``finish`` is None while it streams)."""

    user: str
    answer: str = ""
    model: str = ""
    stats: Stats | None = None
    finish: str | None = None
    safety: str = ""  # what the safety filter did, e.g. "redact: pii" ("" if nothing)


@dataclass
class ChatSession:
    """One browser tab's conversation, kept in a ``gr.State``.

    Handlers mutate it in place; ``active`` is the stream the Stop button cancels.
    """

    turns: list[Turn] = field(default_factory=list)
    active: ChunkStream | None = None

    @property
    def pending(self) -> Turn | None:
        """The last turn if it has no answer yet."""
        if self.turns and self.turns[-1].finish is None:
            return self.turns[-1]
        return None

    def messages(self, system: str = "") -> list[dict[str, str]]:
        """The conversation as chat messages for the model."""
        system = (system or "").strip()
        out = [{"role": "system", "content": system}] if system else []
        for turn in self.turns:
            out.append({"role": "user", "content": turn.user})
            if turn.finish is not None and turn.answer:
                out.append({"role": "assistant", "content": turn.answer})
        return out

    def stop(self) -> bool:
        """Cancel the answer being generated; False if there is none."""
        stream = self.active
        if stream is None:
            return False
        stream.cancel()
        return True


@dataclass(frozen=True)
class ChatControls:
    """The Chat tab's settings, in the order its input components are listed."""

    model: str
    system: str
    temperature: float
    top_p: float
    top_k: float
    max_tokens: float
    seed: float | None
    stop: str
    speculation: str
    draft: str | None


@dataclass(frozen=True)
class ChatView:
    """What the Chat tab shows; ``textbox`` None leaves the message box alone."""

    messages: list[dict[str, str]]
    status: str = ""
    textbox: str | None = None
    warning: str | None = None


def render(session: ChatSession) -> list[dict[str, str]]:
    """Chatbot messages: each answer followed by a line of its stats."""
    out: list[dict[str, str]] = []
    for turn in session.turns:
        out.append({"role": "user", "content": turn.user})
        if turn.answer:
            out.append({"role": "assistant", "content": turn.answer})
        if turn.stats is not None:
            line = stats_line(turn.stats, turn.finish)
            line += f" · 🛡 {turn.safety}" if turn.safety else ""
            out.append({"role": "assistant", "content": f"<sub>{line}</sub>"})
    return out


def add_user_turn(session: ChatSession, text: str) -> ChatView:
    """Start a turn with the user's message (the answer comes from ``respond``)."""
    if session.pending is not None:
        return ChatView(render(session), textbox=text, warning="Wait for the answer.")
    if not text or not text.strip():
        return ChatView(render(session), textbox=text, warning="Type a message first.")
    session.turns.append(Turn(text))
    return ChatView(render(session), textbox="")


def respond(
    pool: ModelPool,
    session: ChatSession,
    controls: ChatControls,
    *,
    settings: UISettings,
    flags: FlagLog | None = None,
) -> Iterator[ChatView]:
    """Stream the answer to the pending turn, redrawing at most every update interval.

    A request that cannot start (bad settings, a model that fails to load, a prompt
    too long, a full queue) removes the turn and puts the message back in the box.
    """
    turn = session.pending
    if turn is None:
        return
    turn.safety = _screen_note(pool, flags, turn.user)  # logged even if blocked
    if controls.model not in pool:
        yield ChatView(render(session), status=f"Loading {controls.model}…")
    try:
        params = to_params(
            temperature=controls.temperature,
            top_p=controls.top_p,
            top_k=controls.top_k,
            max_tokens=controls.max_tokens,
            seed=controls.seed,
            stop=controls.stop,
        )
        model = pool.get_or_load(controls.model)
        spec = speculation_args(pool, controls.speculation, controls.draft)
        stream = model.stream(session.messages(controls.system), params, **spec)
    except Exception as e:  # shown, and the turn undone: the session must not stick
        session.turns.pop()
        yield ChatView(render(session), textbox=turn.user, warning=describe(e))
        return
    session.active, turn.model = stream, model.name
    status = f"{model.name} · {queue_status(pool)}"
    note = turn.safety
    yield ChatView(render(session), status=f"{status} · 🛡 {note}" if note else status)
    yield from _stream_answer(session, turn, stream, settings, flags)


def _screen_note(pool: ModelPool, flags: FlagLog | None, text: str) -> str:
    """Log what the engine's filter finds in the user's message; a note if any."""
    if pool.engine.safety is None:
        return ""
    verdict = moderate(text, "prompt", pool.engine.safety)
    if flags is not None:
        flags.record("chat", "prompt", text, verdict)
    return safety_note(verdict, "your message")


def safety_note(verdict: Verdict | None, what: str) -> str:
    """``"redact: pii in your message"``, or "" when nothing triggered."""
    if verdict is None or not verdict.flagged:
        return ""
    return f"{verdict.action}: {', '.join(verdict.categories)} in {what}"


def _stream_answer(
    session: ChatSession,
    turn: Turn,
    stream: ChunkStream,
    settings: UISettings,
    flags: FlagLog | None,
) -> Iterator[ChatView]:
    throttle, warning = Throttle(settings.update_interval_s), None
    try:
        for chunk in stream:
            turn.answer += chunk.text
            if chunk.finish_reason:
                turn.finish, turn.stats = chunk.finish_reason, chunk.stats
                warning = chunk.error or _answer_flag(turn, chunk.safety, flags)
            if throttle.due(force=chunk.finish_reason is not None):
                status = " · ".join(filter(None, (turn.model, turn.finish)))
                yield ChatView(render(session), status, warning=warning)
    except EngineDied as e:
        turn.finish = "error"
        yield ChatView(render(session), warning=str(e))
    finally:
        stream.cancel()  # a closed handler (Stop, a closed tab) ends the engine job
        session.active = None
        if turn.finish is None:
            turn.finish = "cancelled"


def _answer_flag(
    turn: Turn, verdict: Verdict | None, flags: FlagLog | None
) -> str | None:
    """Note the answer's verdict on the turn and in the log; a warning if stopped."""
    notes = (turn.safety, safety_note(verdict, "the answer"))
    turn.safety = "; ".join(filter(None, notes))
    if flags is not None:  # the answer as shown: already screened
        flags.record("chat", "response", turn.answer, verdict, mask=False)
    if turn.finish == "content_filter":
        return f"The safety filter stopped the answer ({turn.safety})."
    return None


def stop(session: ChatSession) -> str:
    """Cancel the answer being generated (the Stop button)."""
    return "Stopping…" if session.stop() else ""


def retry_last(session: ChatSession) -> ChatView:
    """Drop the last answer so ``respond`` generates it again (Regenerate)."""
    if session.pending is not None or not session.turns:
        return ChatView(render(session), warning="There is no finished answer to redo.")
    session.turns[-1] = Turn(session.turns[-1].user)
    return ChatView(render(session))


def edit_last(session: ChatSession) -> ChatView:
    """Take the last turn back: its message returns to the box for editing."""
    if session.pending is not None or not session.turns:
        return ChatView(render(session), warning="There is no finished turn to edit.")
    turn = session.turns.pop()
    return ChatView(render(session), textbox=turn.user)


def clear(session: ChatSession) -> ChatView:
    """Stop any answer and forget the conversation."""
    session.stop()
    session.turns.clear()
    return ChatView([], textbox="")


def export_chat(
    session: ChatSession, system: str, fmt: str, *, directory: Path
) -> Path:
    """Write the conversation to a new ``.json`` or ``.md`` file under ``directory``.

    Raises:
        ValueError: Nothing to export, or an unknown format.
    """
    if not session.turns:
        raise ValueError("The conversation is empty; nothing to export.")
    if fmt not in ("json", "md"):
        raise ValueError(f"Export as 'json' or 'md', not {fmt!r}.")
    directory.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="chat-", dir=directory))
    path = folder / f"silica-chat-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
    text = _to_json(session, system) if fmt == "json" else _to_markdown(session, system)
    path.write_text(text, encoding="utf-8")
    return path


def _to_json(session: ChatSession, system: str) -> str:
    turns = [
        {
            "user": t.user,
            "answer": t.answer,
            "model": t.model,
            "finish_reason": t.finish,
            "stats": asdict(t.stats) if t.stats else None,
        }
        for t in session.turns
    ]
    body = {"system": system, "messages": session.messages(system), "turns": turns}
    return json.dumps(body, ensure_ascii=False, indent=2)


def _to_markdown(session: ChatSession, system: str) -> str:
    lines = ["# Silica chat", ""]
    if system and system.strip():
        lines += ["**System:** " + system, ""]
    for t in session.turns:
        lines += ["## You", "", t.user, "", f"## Assistant ({t.model})", "", t.answer]
        if t.stats:
            lines += ["", f"_{stats_line(t.stats, t.finish)}_"]
        lines.append("")
    return "\n".join(lines)
