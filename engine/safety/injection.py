"""Prompt-injection and jailbreak phrasings in English and Chinese.

Matched on the normalized text (``normalize.normalize``), so "Ignоre аll
previous instructions" with Cyrillic letters, "1gn0re" and "忽 略 之 前" are
caught too. Each rule has a score: an order to drop the instructions or a
persona without limits scores high; words that are fine on their own ("system
prompt", "jailbreak", "越狱", "developer mode") score below the default threshold.
Talking about injection ("what is prompt injection", "how do I defend against
'ignore previous instructions'", "什么是提示词注入攻击") dampens every rule near it.
"""

from __future__ import annotations

from functools import cache

from engine.safety.findings import Finding
from engine.safety.normalize import Normalized
from engine.safety.pattern_set import PatternSet, compile_patterns

CATEGORY, DETECTOR = "prompt_injection", "injection"
DAMP, WINDOW = 0.3, 80  # dampening factor; characters either side a cue counts
_EARLIER = "previous|prior|above|earlier|preceding|former|initial|original|system"
_ORDERS = (
    "instructions?|rules?|guidelines|directives|programming|constraints"
    "|restrictions|guardrails|polic(?:y|ies)|content polic(?:y|ies)"
)  # not "messages" or "my": "ignore my previous message" is a user's own edit
_LIMITS = "rules|restrictions|limits|limitations|filters|guidelines|boundaries"
_LIMITS_ZH = "限制|道德约束|道德|约束|规则|审查|过滤"
_PROMPT_ZH = "系统提示词|系统提示|隐藏指令|初始指令|原始指令|系统消息|初始设定|隐藏设定"
# (rule, score, pattern); patterns are lowercase, as normalized text is.
RULES: tuple[tuple[str, float, str], ...] = (
    (
        "ignore_instructions",
        0.9,
        r"(?:ignore|disregard|forget|override|bypass|skip) (?:all |any |every )?"
        rf"(?:of )?(?:your |the )?(?:(?:{_EARLIER}) )?(?:{_ORDERS})",
    ),
    ("forget_everything", 0.8, r"forget everything (?:above|before|you were told)"),
    (
        "ignore_above",
        0.8,
        r"(?:ignore|disregard) (?:all )?(?:of )?(?:the |everything )?"
        r"(?:above|previous|prior|preceding)(?: text| content| prompt)?(?: and|,)",
    ),
    (
        "persona_without_limits",
        0.85,
        r"you are now (?:dan|an? (?:\w+ )?(?:ai|assistant|model|chatbot) "
        r"(?:without|with no|that has no)|unrestricted|jailbroken|unfiltered)",
    ),
    ("do_anything_now", 0.85, r"do anything now"),
    (
        "enable_mode",
        0.85,
        r"(?:enable|enter|activate|switch to|turn on) (?:the )?"
        r"(?:developer|dev|god|jailbreak|unrestricted|dan) mode",
    ),
    ("mode", 0.45, r"(?:developer|jailbreak|god|dan|unrestricted|uncensored) mode"),
    (
        "in_mode",
        0.8,
        r"you(?:.re| are) (?:now )?in (?:developer|jailbreak|god|dan|unrestricted"
        r"|uncensored) mode",
    ),
    (
        "pretend_no_limits",
        0.85,
        rf"pretend (?:that )?you (?:have|had) no (?:{_LIMITS})"
        r"|pretend (?:that )?you(?: are|.re) (?:an? )?(?:unrestricted|unfiltered|evil)",
    ),
    (
        "act_without_limits",
        0.85,
        r"(?:act|behave|respond|answer) as (?:if you were )?(?:an? )?"
        rf"(?:ai|assistant|model|chatbot)? ?(?:without|with no) (?:any )?"
        rf"(?:{_LIMITS}|ethic\w*|morals|censorship)",
    ),
    ("without_limits", 0.4, rf"(?:without|with no|free of) (?:any )?(?:{_LIMITS})"),
    (
        "reveal_prompt",
        0.8,
        r"(?:reveal|show|print|output|repeat|display|tell me|give me|leak|dump) "
        r"(?:me )?(?:your|the) (?:full |entire |original |hidden |secret |initial )?"
        r"(?:system prompt|system message|instructions above|prompt above"
        r"|(?:hidden|initial|original|secret|system) instructions|developer message)",
    ),
    ("system_prompt", 0.3, r"system prompt"),
    ("system_override", 0.75, r"system override"),
    ("never_refuses", 0.35, r"never refuses?|no rules"),
    (
        "note_to_ai",
        0.6,
        r"note to (?:the |any |all )?(?:ai|llm|language model)s?(?: assistants?)?",
    ),
    ("bypass_safety", 0.8, r"bypass (?:your|the) (?:safety|filters?|guardrails)"),
    (
        "skip_safety",
        0.75,
        r"(?:skip|disable|turn off|ignore) (?:your |the |all )?(?:safety|content)"
        r" (?:checks?|filters?|guidelines|measures)",
    ),
    ("fake_system_turn", 0.45, r"\[system\]|<system>|<\|im_start\|>system|### system"),
    (
        "comply_with_all",
        0.6,
        r"(?:must |will |always )?comply with (?:all|every|any) "
        r"(?:requests?|instructions)",
    ),
    (
        "unfiltered_persona",
        0.8,
        r"(?:act|behave) as (?:my |an? |your )?"
        r"(?:unfiltered|uncensored|unrestricted|evil|jailbroken)",
    ),
    ("jailbreak", 0.3, r"jailbreak(?:s|ed|ing)?"),
    ("from_now_on", 0.3, r"from now on,? you (?:will|are|must|shall)"),
    (
        "ignore_instructions_zh",
        0.9,
        r"(?:忽略|无视|忘掉|忘记|不要理会|跳过|不用管)你?"
        r"(?:之前|以前|上面|前面|先前|此前|刚才|原来|原有)?(?:的|收到的)?"
        r"(?:所有|全部|一切)?的?(?:指令|指示|规则|设定|提示|要求|限制|安全准则|准则|规定|约束)",
    ),
    (
        "persona_without_limits_zh",
        0.9,
        rf"你现在是(?:一个)?(?:没有|不受)(?:任何)?(?:{_LIMITS_ZH})",
    ),
    (
        "assistant_without_limits_zh",
        0.8,
        rf"(?:没有|不受|无)(?:任何)?(?:{_LIMITS_ZH})的(?:ai|人工智能|助手|模型|机器人)",
    ),
    (
        "enable_mode_zh",
        0.85,
        r"(?:进入|开启|打开|启用|切换到)了?(?:开发者|开发人员|越狱|上帝|无限制)模式"
        r"|(?:越狱|开发者)模式(?:已)?(?:开启|启动|激活)",
    ),
    ("mode_zh", 0.45, r"(?:开发者|越狱)模式"),
    (
        "ignore_above_zh",
        0.8,
        r"(?:忽略|无视|忘掉|忘记)(?:上面|之前|以上|前面|上述)的?(?:所有)?(?:内容|对话|文字|话)",
    ),
    (
        "evil_persona_zh",
        0.85,
        r"(?:假装|假设|想象)你是(?:一个)?(?:邪恶|没有(?:任何)?(?:限制|底线|道德)|不受限制)",
    ),
    ("no_bottom_line_zh", 0.4, r"没有(?:任何)?底线"),
    ("no_rules_zh", 0.8, r"你(?:现在)?没有任何(?:规则|限制|约束)"),
    (
        "must_answer_zh",
        0.5,
        r"必须(?:回答|服从|满足)(?:我的?|所有的?)*(?:问题|请求|要求|指令)",
    ),
    ("fake_system_zh", 0.4, r"系统通知|系统消息|【系统|\[系统"),
    (
        "skip_safety_zh",
        0.75,
        r"(?:不再进行|跳过|关闭|绕过)(?:所有)?(?:安全检查|安全过滤|内容过滤|过滤|安全审查)",
    ),
    (
        "roleplay_without_limits_zh",
        0.85,
        rf"扮演(?:一个)?(?:没有|不受|无)(?:任何)?(?:{_LIMITS_ZH})",
    ),
    (
        "reveal_prompt_zh",
        0.8,
        rf"(?:告诉我|输出|发给我|显示|打印|泄露|说出|重复)(?:一下)?(?:你的)?(?:{_PROMPT_ZH})"
        rf"|把你的(?:{_PROMPT_ZH}).{{0,8}}(?:发给我|告诉我|输出)",
    ),
    ("system_prompt_zh", 0.3, r"系统提示词|系统提示"),
    ("jailbreak_zh", 0.3, r"越狱"),
    ("from_now_on_zh", 0.4, r"从现在开始,?你(?:不再是|将|要|必须)"),
    (
        "note_to_ai_zh",
        0.7,
        r"给(?:阅读|读取|处理|总结)(?:本|这个|此)(?:网页|页面|文档|邮件)的"
        r"(?:ai|人工智能|助手|模型)",
    ),
    ("never_refuses_zh", 0.4, r"从不拒绝|永远不会拒绝|不会拒绝任何"),
)
# Talking about injection rather than doing it.
DISCUSSION = (
    r"what (?:is|are|does)",
    r"how (?:do|can|should) (?:i|we) (?:defend|protect|prevent|detect|stop|block)",
    r"attacks?",
    r"prompt injection",
    r"defend",
    r"mitigat\w*",
    r"is when",
    r"untrusted",
    "什么是",
    "是指",
    "注入",
    "攻击",
    "防御",
    "防范",
)


@cache
def _patterns() -> PatternSet:
    # Rules first, then the discussion cues: ids >= len(RULES) are cues.
    return compile_patterns([p for _, _, p in RULES] + list(DISCUSSION))


def find_injection(normalized: Normalized) -> list[Finding]:
    """Find prompt-injection and jailbreak phrasings in a normalized text.

    Args:
        normalized: ``normalize(text)``; findings span the original ``text``.

    Returns:
        One finding per rule match: category "prompt_injection", detector
        "injection", rule the name in ``RULES`` (plus "~discussion" when a
        discussion cue nearby dampened it).
    """
    found = _patterns().matches(normalized.text)
    cues = [(s, e) for s, e, pid in found if pid >= len(RULES)]
    findings = []
    for start, end, pid in found:
        if pid >= len(RULES):
            continue
        rule, score, _ = RULES[pid]
        if any(s < end + WINDOW and e > start - WINDOW for s, e in cues):
            rule, score = f"{rule}~discussion", score * DAMP
        span = normalized.span(start, end)
        findings.append(Finding(CATEGORY, *span, round(score, 3), DETECTOR, rule))
    return findings
