"""English and Chinese labels for the web UI.

Gradio picks the browser's language; the user switches in the footer's Settings
(Language). Text the handlers write (warnings, stats lines) stays in English.
"""

from __future__ import annotations

import gradio as gr

# key: (English, 简体中文)
STRINGS: dict[str, tuple[str, str]] = {
    "title": ("Silica", "Silica"),
    "subtitle": (
        "On-device LLMs on MLX · the same engine serves the OpenAI API at /v1",
        "基于 MLX 的本地大模型 · 同一引擎在 /v1 提供 OpenAI 兼容接口",
    ),
    "language": ("Language", "语言"),
    "tab_chat": ("Chat", "对话"),
    "tab_compare": ("Compare", "对比"),
    "tab_models": ("Models", "模型"),
    "tab_safety": ("Safety", "安全"),
    "model": ("Model", "模型"),
    "refresh": ("Refresh", "刷新"),
    "preset": ("Task", "任务"),
    "settings": ("Settings", "设置"),
    "system": ("System prompt", "系统提示词"),
    "temperature": ("Temperature", "温度"),
    "top_p": ("Top-p", "Top-p"),
    "top_k": ("Top-k (0: off)", "Top-k（0 为关闭）"),
    "max_tokens": ("Max tokens", "最大生成长度"),
    "seed": ("Seed (-1: random)", "随机种子（-1 为随机）"),
    "stop": (
        "Stop strings (comma-separated, \\n for newline)",
        "停止词（逗号分隔，\\n 表示换行）",
    ),
    "speculation": ("Speculative decoding", "投机解码"),
    "spec_off": ("Off", "关闭"),
    "spec_lookup": ("Prompt lookup", "提示词查找"),
    "spec_draft": ("Draft model", "草稿模型"),
    "spec_auto": ("Auto (lookup, then draft)", "自动（先查找，再草稿）"),
    "draft": ("Draft model", "草稿模型"),
    "message": ("Message", "消息"),
    "message_placeholder": (
        "Type a message; Enter sends, Shift+Enter adds a line",
        "输入消息；回车发送，Shift+回车换行",
    ),
    "send": ("Send", "发送"),
    "stop_button": ("Stop", "停止"),
    "regenerate": ("Regenerate", "重新生成"),
    "edit": ("Edit last", "编辑上一条"),
    "clear": ("Clear", "清空"),
    "export_json": ("Export JSON", "导出 JSON"),
    "export_md": ("Export Markdown", "导出 Markdown"),
    "export_file": ("Exported chat", "导出的对话"),
    "status": ("Status", "状态"),
    "prompt": ("Prompt", "提示词"),
    "sides": ("Answers side by side", "并排数量"),
    "run_mode": ("Run", "运行方式"),
    "mode_together": ("Together (interleaved)", "同时（交替）"),
    "mode_sequential": ("One after another (fair timing)", "依次（计时更公平）"),
    "blind": (
        "Blind mode (arena): hide names, then vote",
        "盲测（竞技场）：隐藏名称后投票",
    ),
    "run": ("Run", "运行"),
    "side": ("Side", "侧"),
    "answer": ("Answer", "回答"),
    "metrics": ("Metrics", "指标"),
    "chart_tps": ("Tokens/s", "每秒生成 token 数"),
    "chart_ttft": ("Time to first token (s)", "首 token 时间（秒）"),
    "chart_memory": ("Peak memory (GB)", "峰值内存（GB）"),
    "chart_length": ("Output tokens", "输出 token 数"),
    "vote_a": ("A is better", "A 更好"),
    "vote_b": ("B is better", "B 更好"),
    "vote_tie": ("Tie", "平局"),
    "vote_both_bad": ("Both are bad", "都不好"),
    "leaderboard": ("Leaderboard", "排行榜"),
    "stored": ("Models on disk", "本地模型"),
    "loaded": ("Loaded models", "已加载模型"),
    "memory": ("Memory", "内存"),
    "load": ("Load", "加载"),
    "unload": ("Unload", "卸载"),
    "pull": ("Download a catalog model", "下载目录中的模型"),
    "pull_button": ("Download and convert", "下载并转换"),
    "convert": (
        "Convert a GGUF file or Hugging Face folder",
        "转换 GGUF 文件或 Hugging Face 目录",
    ),
    "convert_src": ("Source (.gguf file or folder)", "源（.gguf 文件或目录）"),
    "convert_out": (
        "Output folder (default: models/NAME)",
        "输出目录（默认 models/名称）",
    ),
    "convert_bits": ("Bits", "量化位数"),
    "convert_dtype": ("Float type", "浮点类型"),
    "convert_force": ("Replace the output folder", "覆盖输出目录"),
    "convert_button": ("Convert", "转换"),
    "safety_policy": ("Active policy", "当前策略"),
    "safety_text": ("Text to check", "待检测文本"),
    "safety_role": ("Check as", "检测对象"),
    "safety_check": ("Check", "检测"),
    "safety_findings": ("Findings", "检测结果"),
    "safety_verdict": ("Verdict", "结论"),
    "safety_audit": ("Recent flags", "最近标记"),
}

# Gradio's language codes; "zh" and "zh-CN" both, as browsers send either.
LOCALES = {"en": 0, "zh": 1, "zh-CN": 1}
# Gradio's own translations own top-level names such as "chatbot" and "status";
# a key of ours with such a name would show "[object Object]".
PREFIX = "silica_"


class Labels(gr.I18n):
    """``gr.I18n`` whose keys are ours, kept apart from Gradio's own."""

    def __call__(self, key: str) -> gr.i18n.I18nData:
        if key not in STRINGS:
            raise KeyError(f"No label {key!r} in webui/i18n.py.")
        return super().__call__(PREFIX + key)


def make_i18n() -> Labels:
    """The translations, for ``gr.mount_gradio_app(..., i18n=...)``."""
    tables = {
        locale: {PREFIX + key: pair[column] for key, pair in STRINGS.items()}
        for locale, column in LOCALES.items()
    }
    return Labels(**tables)
