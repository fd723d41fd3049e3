"""Measure how much a conversion changed a model: perplexity and next-token KL.

``silica convert --eval`` runs the source and the converted model over the same shipped
text and compares their next-token distributions position by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm import tqdm

EVAL_TEXT_PATH = Path(__file__).parent / "data" / "eval_text.txt"
DEFAULT_WINDOW = 512


class TextEncoder(Protocol):
    """Anything with ``encode``: a Hugging Face tokenizer or mlx-lm's wrapper of one."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class QualityReport:
    """How closely a converted model follows its source on the evaluation text.

    Attributes:
        tokens: Number of predicted positions (see ``evaluate`` for the window rule).
        source_perplexity: ``exp(mean NLL)`` of the source model over those positions.
        converted_perplexity: The same for the converted model.
        kl_mean: Mean over positions of KL(p_source || p_converted), nats per token.
        kl_p99: 99th percentile of the per-position KL, nats.
        kl_max: Largest per-position KL, nats.
        top1_agreement: Fraction of positions where both models' argmax tokens agree.
    """

    tokens: int
    source_perplexity: float
    converted_perplexity: float
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float

    @property
    def perplexity_increase(self) -> float:
        """Relative perplexity change of the converted model: 0.031 means +3.1%."""
        return self.converted_perplexity / self.source_perplexity - 1.0

    def render(self) -> str:
        """Return a short table for the CLI, one metric per line."""
        return "\n".join(
            [
                f"Quality over {self.tokens} predicted tokens:",
                f"  perplexity       source {self.source_perplexity:.3f}"
                f"  converted {self.converted_perplexity:.3f}"
                f"  ({self.perplexity_increase:+.2%})",
                f"  KL(src || conv)  mean {self.kl_mean:.4f}  p99 {self.kl_p99:.4f}"
                f"  max {self.kl_max:.4f}  nats/token",
                f"  top-1 agreement  {self.top1_agreement:.2%}",
            ]
        )


def eval_tokens(tokenizer: TextEncoder, *, text: str | None = None) -> list[int]:
    """Tokenize the evaluation text.

    Args:
        tokenizer: A Hugging Face tokenizer or mlx-lm ``TokenizerWrapper``. Its own
            defaults apply, so a tokenizer that adds BOS adds it once, at the start.
        text: Text to use instead of the shipped ``EVAL_TEXT_PATH``.

    Returns:
        The token ids.
    """
    if text is None:
        text = EVAL_TEXT_PATH.read_text(encoding="utf-8")
    return list(tokenizer.encode(text))


def evaluate(
    source: nn.Module,
    converted: nn.Module,
    tokens: list[int],
    *,
    window: int = DEFAULT_WINDOW,
    max_tokens: int | None = None,
    progress: bool = True,
) -> QualityReport:
    """Compare ``converted`` with ``source`` on ``tokens``.

    ``tokens`` is cut into consecutive, non-overlapping windows of ``window`` tokens,
    and each window is a fresh forward pass with no cache, as in ``mlx_lm.perplexity``.
    Inside a window every token after the first is predicted from the ones before it;
    the first token of each window is context only, so ``n`` tokens give
    ``n - ceil(n / window)`` predictions (a trailing one-token window gives none).

    Args:
        source: The reference mlx-lm model; ``model(ids[None])`` returns
            logits of shape ``(1, L, vocab)``.
        converted: The model to judge, with the same vocabulary.
        tokens: Token ids, e.g. from ``eval_tokens``.
        window: Tokens per forward pass; bounds memory and the context length used.
        max_tokens: Use only the first ``max_tokens`` tokens. ``None`` uses all.
        progress: Show a tqdm bar over windows on stderr.

    Returns:
        The report; KL values are in nats.

    Raises:
        ValueError: ``window`` is below 2, fewer than 2 tokens are used, or the two
            models' logits differ in vocabulary size.
    """
    if window < 2:
        raise ValueError(
            f"window must be at least 2 tokens to predict one, got {window}"
        )
    used = tokens if max_tokens is None else tokens[:max_tokens]
    starts = [s for s in range(0, len(used), window) if len(used) - s >= 2]
    if not starts:
        raise ValueError(f"Need at least 2 tokens to evaluate, got {len(used)}.")
    parts = [
        _score_window(source, converted, mx.array(used[s : s + window]))
        for s in tqdm(starts, desc="quality", unit="window", disable=not progress)
    ]
    nll_s, nll_c, kl, agree = (
        np.concatenate(column) for column in zip(*parts, strict=True)
    )
    return QualityReport(
        tokens=len(kl),
        source_perplexity=float(np.exp(nll_s.mean())),
        converted_perplexity=float(np.exp(nll_c.mean())),
        kl_mean=float(kl.mean()),
        kl_p99=float(np.percentile(kl, 99)),
        kl_max=float(kl.max()),
        top1_agreement=float(agree.mean()),
    )


def _log_probs(model: nn.Module, inputs: mx.array) -> mx.array:
    logits = model(inputs[None])[0].astype(mx.float32)  # (L, vocab)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _score_window(
    source: nn.Module, converted: nn.Module, chunk: mx.array
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-position source NLL, converted NLL, KL and top-1 agreement for one window."""
    inputs, targets = chunk[:-1], chunk[1:]  # (L,), (L,) with L = len(chunk) - 1
    logp_s = _log_probs(source, inputs)
    logp_c = _log_probs(converted, inputs)
    if logp_s.shape != logp_c.shape:
        raise ValueError(
            f"Source logits have shape {logp_s.shape}, converted {logp_c.shape}; "
            "compare models with the same vocabulary."
        )
    nll_s = -mx.take_along_axis(logp_s, targets[:, None], axis=-1)[:, 0]  # (L,)
    nll_c = -mx.take_along_axis(logp_c, targets[:, None], axis=-1)[:, 0]
    p_s = mx.exp(logp_s)
    # Tokens the source gives zero probability add nothing; skip them to avoid 0 * inf.
    kl = mx.sum(mx.where(p_s > 0, p_s * (logp_s - logp_c), 0.0), axis=-1)  # (L,)
    agree = mx.argmax(logp_s, axis=-1) == mx.argmax(logp_c, axis=-1)
    mx.eval(nll_s, nll_c, kl, agree)  # one window's logits alive at a time
    return (
        np.array(nll_s, dtype=np.float64),
        np.array(nll_c, dtype=np.float64),
        np.array(kl, dtype=np.float64),
        np.array(agree),
    )
