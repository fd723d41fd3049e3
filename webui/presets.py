"""Task presets for the Chat tab: a system prompt and a message to fill in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """What choosing a task puts into the Chat tab.

    Attributes:
        label: Shown in the picker (English and Chinese).
        system: The system prompt.
        template: The message box's new text; the user pastes or types into it.
        speculation: The speculation mode that suits the task (prompt lookup for
            tasks that copy from the prompt).
    """

    label: str
    system: str
    template: str
    speculation: str = "off"


PRESETS: dict[str, Preset] = {
    "chat": Preset("Chat · 聊天", "You are a helpful assistant.", "", "off"),
    "summarize": Preset(
        "Summarize · 摘要",
        "You summarize texts faithfully and briefly, keeping names and numbers.",
        "Summarize the following text in a few sentences:\n\n",
        "lookup",
    ),
    "translate_zh_en": Preset(
        "Translate 中→英",
        "You are a professional translator. Translate Chinese into natural English. "
        "Reply with the translation only.",
        "Translate into English:\n\n",
    ),
    "translate_en_zh": Preset(
        "Translate 英→中",
        "你是专业翻译。把英文翻译成自然流畅的简体中文，只输出译文。",
        "翻译成中文：\n\n",
    ),
    "qa": Preset(
        "Answer from a text · 阅读问答",
        "Answer the question using only the text given. If the text does not say, "
        "answer that it does not say.",
        "Text:\n\n\nQuestion: ",
        "lookup",
    ),
    "write": Preset(
        "Write · 写作",
        "You are a skilled writer. Write clear, well-organized text in the language "
        "of the request.",
        "Write a short piece about ",
    ),
}
DEFAULT_PRESET = "chat"


def preset_choices() -> list[tuple[str, str]]:
    """``(label, key)`` pairs for a dropdown."""
    return [(p.label, key) for key, p in PRESETS.items()]
