"""A draft model's output layer cut to the likely part of the vocabulary.

A 0.5B draft with a 152k-token vocabulary spends a fifth or more of each forward in its
output layer (136M of Qwen2.5-0.5B's 494M parameters). Here the draft proposes only
from a subset: the first ``size`` token ids (BPE and SentencePiece vocabularies number
tokens by merge order or score, so low ids are the frequent ones), the prompt's tokens,
and every token the text brings later. Verification stays exact whatever the draft
proposes: q is the subset's softmax, zero elsewhere (as in FR-Spec, Zhao et al. 2025).
When the text keeps leaving the subset (Chinese text, whose tokens have high ids), the
head goes back to the whole vocabulary for the rest of the generation.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.int8_linear import int8_product

# Token ids the draft head keeps, besides the text's own. Qwen2.5-Coder's code answers
# fall outside the first 32768 ids often enough to cut acceptance from 0.90 to 0.72;
# within the first 49152 they did not move it (``silica bench``'s code workload).
DRAFT_VOCAB = 49152
# Architectures whose Model.__call__ is exactly head(model.model(inputs, cache)):
# no logit scaling or soft-capping after the last norm.
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
MISS_DECAY = 0.95  # per fed token, for the rate of tokens outside the subset
MISS_LIMIT = 0.2  # above this rate the subset is given up


def reduced_head(model: nn.Module, tokens: list[int], size: int = DRAFT_VOCAB) -> Any:
    """``model`` drafting from ``size`` ids plus ``tokens``' (see the module doc), or
    ``model`` itself where that would not pay: a vocabulary under twice ``size``,
    ``size`` 0, a prompt that already leaves the subset too often, or a head that is
    not a plain linear layer."""
    args = model.args
    plain = getattr(args, "model_type", None) in PLAIN_HEAD and "model" in model
    if not size or args.vocab_size < 2 * size or not plain:
        return model
    if miss_rate(0.0, tokens, size, set()) > MISS_LIMIT:
        return model
    return ReducedHead(model, tokens, size)


def miss_rate(rate: float, tokens: list[int], size: int, known: set[int]) -> float:
    """``rate`` decayed over ``tokens``, each an event when it is neither below
    ``size`` nor in ``known``, which it then joins."""
    for token in tokens:
        miss = token >= size and token not in known
        rate = MISS_DECAY * rate + (1 - MISS_DECAY) * miss
        if miss:
            known.add(token)
    return rate


class ReducedHead:
    """Called like the model: (1, L) inputs and a cache in, (1, L, vocab) logits out,
    -inf outside the subset. Sees every token fed to the draft, so it learns the
    text's tokens as they come."""

    def __init__(self, model: nn.Module, tokens: list[int], size: int) -> None:
        self.model, self.size = model, size
        self.vocab = model.args.vocab_size
        self.layer = model.lm_head if "lm_head" in model else model.model.embed_tokens
        self.first = _rows(self.layer, slice(0, size))
        self.extra: list[int] = []  # kept ids >= size, in the order added
        self.extra_ids = mx.array([], mx.int32)  # the same, for indexing
        self.extra_rows: dict[str, mx.array] = {}
        self.miss_rate = 0.0
        self.active = True
        self._keep({t for t in tokens if t >= size})

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None) -> mx.array:
        if self.active:
            self._observe(inputs.reshape(-1).tolist())
        if not self.active:
            return self.model(inputs, cache=cache)
        hidden = self.model.model(inputs, cache)
        first = _project(self.layer, self.first, hidden)
        shape = (*first.shape[:-1], self.vocab - self.size)
        rest = mx.full(shape, -mx.inf, first.dtype)
        logits = mx.concatenate([first, rest], axis=-1)
        if self.extra:
            extra = _project(self.layer, self.extra_rows, hidden)
            logits[..., self.extra_ids] = extra
        return logits

    def _observe(self, tokens: list[int]) -> None:
        """Count the fed tokens the subset lacked, then keep them."""
        known = set(self.extra)
        self.miss_rate = miss_rate(self.miss_rate, tokens, self.size, known)
        self.active = self.miss_rate <= MISS_LIMIT
        self._keep(known)

    def _keep(self, ids: set[int]) -> None:
        """Add ``ids`` (all >= size) to the subset."""
        new = sorted(ids.difference(self.extra))
        if new:
            self.extra += new
            self.extra_ids = mx.array(self.extra, mx.int32)
            self.extra_rows = _rows(self.layer, self.extra_ids)


def _rows(layer: nn.Module, index: Any) -> dict[str, mx.array]:
    """The head's arrays (weight, quantization scales and biases, bias; or int8 rows
    and their scales, ``engine.int8_linear``) at ``index``."""
    if "packed" in layer:
        names = ("packed", "scales", "bias")
    else:
        names = ("weight", "scales", "biases", "bias")
    return {name: layer[name][index] for name in names if name in layer}


def _project(layer: nn.Module, rows: dict[str, mx.array], hidden: mx.array) -> mx.array:
    if "packed" in rows:
        out = int8_product(hidden, rows["packed"], rows["scales"])
    elif "scales" in rows:
        out = mx.quantized_matmul(
            hidden,
            rows["weight"],
            scales=rows["scales"],
            biases=rows.get("biases"),
            transpose=True,
            group_size=layer.group_size,
            bits=layer.bits,
            mode=getattr(layer, "mode", "affine"),
        )
    else:
        out = hidden @ rows["weight"].T
    return out + rows["bias"] if "bias" in rows else out
