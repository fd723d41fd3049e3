"""What the Chat and Compare tabs share: raw control values to engine arguments.

No Gradio here: the tabs pass plain values in and get plain values back.
"""

from __future__ import annotations

import time
from typing import Any

from engine import (
    CatalogError,
    EngineBusy,
    EngineDied,
    ModelFileError,
    ModelPool,
    SamplingParams,
)

SPECULATION_MODES = ("off", "lookup", "draft", "auto")
# Errors users cause or can fix; their message is meant for them as it is.
USER_ERRORS = (
    ValueError,
    EngineBusy,
    EngineDied,
    ModelFileError,
    CatalogError,
    OSError,
)


def describe(error: Exception) -> str:
    """A readable message for a warning toast (the type too when it is unexpected)."""
    if isinstance(error, USER_ERRORS):
        return str(error)
    return f"{type(error).__name__}: {error}"


def parse_stops(text: str | None) -> tuple[str, ...]:
    r"""Comma-separated stop strings; ``\n`` and ``\t`` stand for newline and tab."""
    if not text:
        return ()
    parts = (p.strip() for p in text.split(","))
    return tuple(
        p.replace("\\n", "\n").replace("\\t", "\t") for p in parts if p.strip()
    )


def to_params(
    *,
    temperature: float,
    top_p: float,
    top_k: float,
    max_tokens: float,
    seed: float | None,
    stop: str | None,
) -> SamplingParams:
    """``SamplingParams`` from the controls; a negative or empty seed is random.

    Raises:
        ValueError: A value is out of range (the message names it).
    """
    return SamplingParams(
        max_tokens=int(max_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        seed=None if seed is None or seed < 0 else int(seed),
        stop=parse_stops(stop),
    )


def speculation_args(pool: ModelPool, mode: str, draft: str | None) -> dict[str, Any]:
    """``Model.stream`` keyword arguments for a speculation choice.

    Raises:
        ValueError: An unknown mode, or draft mode without a draft model.
    """
    if mode not in SPECULATION_MODES:
        raise ValueError(
            f"Speculation must be one of {SPECULATION_MODES}, not {mode!r}."
        )
    if mode == "off":
        return {}
    if mode == "lookup":
        return {"speculation": "lookup"}
    if mode == "auto":  # lookup where the text repeats, the draft model elsewhere
        return {
            "speculation": "auto",
            "draft": pool.get_or_load(draft) if draft else None,
        }
    if not draft:
        raise ValueError(
            "Pick a draft model (same tokenizer, smaller) or turn drafts off."
        )
    return {"draft": pool.get_or_load(draft)}


def queue_status(pool: ModelPool) -> str:
    """``engine queue 2/64``: tasks waiting on the engine (API requests included)."""
    waiting, most = pool.engine.queued
    return f"engine queue {waiting}/{most}"


class Throttle:
    """True at most once per ``interval_s`` seconds (and whenever forced)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self._last = interval_s, float("-inf")

    def due(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False
