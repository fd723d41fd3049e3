"""Prompt lookup: draft tokens by matching the last n-gram earlier in the text.

No second model: summaries, edits, extraction and RAG answers repeat their prompt, so
the tokens that followed an earlier occurrence of the last few tokens are good drafts.
"""

from __future__ import annotations

LOOKUP_NGRAMS = (3, 2, 1)  # n-gram sizes tried, longest first


def lookup_drafts(
    tokens: list[int], k: int, ngrams: tuple[int, ...] = LOOKUP_NGRAMS
) -> list[int]:
    """The k tokens after the latest earlier match of the last n-gram, longest first."""
    for n in ngrams if k else ():
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + k]
    return []
