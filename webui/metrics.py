"""Turn an engine's ``Stats`` into the short lines and tables the UI shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from engine import Stats

METRIC_COLUMNS = {
    "tokens_per_s": "tokens/s",
    "ttft_s": "time to first token (s)",
    "peak_memory_gb": "peak memory (GB)",
    "output_tokens": "output tokens",
}
TABLE_COLUMNS = [
    "side",
    "model",
    "finish",
    *METRIC_COLUMNS,
    "prompt_tokens",
    "cached_tokens",
    "acceptance",
]


@dataclass(frozen=True)
class Result:
    """One finished answer: its side ("A"), who gave it and how it went."""

    label: str
    model: str
    stats: Stats | None
    finish: str | None


def stats_line(stats: Stats | None, finish: str | None = None) -> str:
    """One line under an answer: speed, cache hits, memory, acceptance, finish."""
    if stats is None:
        return ""
    parts = [
        f"⏱ {stats.ttft_s:.2f} s to first token",
        f"⚡ {stats.decode_tps:.1f} tok/s",
        f"{stats.completion_tokens} tokens",
        f"♻ {stats.cached_tokens}/{stats.prompt_tokens} prompt tokens cached",
        f"💾 {stats.peak_memory_gb:.2f} GB peak",
    ]
    if stats.acceptance_rate is not None:
        parts.append(f"🎯 {stats.acceptance_rate:.0%} drafts accepted")
    if finish and finish != "stop":
        parts.append(f"[{finish}]")
    return " · ".join(parts)


def metrics_table(results: Sequence[Result]) -> pd.DataFrame:
    """One row per answer with the numbers the Compare tab charts."""
    rows = []
    for r in results:
        s = r.stats or Stats()
        rows.append(
            {
                "side": r.label,
                "model": r.model,
                "finish": r.finish or "",
                "tokens_per_s": round(s.decode_tps, 2),
                "ttft_s": round(s.ttft_s, 3),
                "peak_memory_gb": round(s.peak_memory_gb, 3),
                "output_tokens": s.completion_tokens,
                "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.cached_tokens,
                "acceptance": (
                    "" if s.acceptance_rate is None else f"{s.acceptance_rate:.0%}"
                ),
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def empty_table() -> pd.DataFrame:
    """No rows, but numeric columns typed as numbers (charts keep their axis types)."""
    table = pd.DataFrame(columns=TABLE_COLUMNS)
    numeric = [*METRIC_COLUMNS, "prompt_tokens", "cached_tokens"]
    return table.astype(dict.fromkeys(numeric, "float64"))
