"""CLI flags for how models load (compute format, KV cache) and the Engine options."""

from __future__ import annotations

import argparse
from typing import Any

from engine.compute_format import COMPUTE_FORMATS
from engine.kv_cache import KV_BITS


def add_load_flags(p: argparse.ArgumentParser) -> None:
    """``--compute-format``, ``--kv-bits`` and ``--max-kv-size`` (``load_options``)."""
    g = p.add_argument_group("model loading")
    g.add_argument(
        "--compute-format",
        choices=COMPUTE_FORMATS,
        default="auto",
        help="auto: compute in float32 when that is faster on this backend (MLX's "
        "CPU) and fits in memory, else as stored; stored: as the file holds the "
        "weights; float32: always widen (default: %(default)s)",
    )
    kv = g.add_mutually_exclusive_group()
    kv.add_argument(
        "--kv-bits",
        type=int,
        choices=KV_BITS,
        help="quantize the KV cache to this many bits: less memory per token, "
        "slightly lower quality; no batching or speculation for the model",
    )
    kv.add_argument(
        "--max-kv-size",
        type=int,
        metavar="TOKENS",
        help="keep only the last TOKENS tokens of the KV cache (a rotating cache "
        "bounds memory for long chats; older context is forgotten); no batching or "
        "speculation for the model",
    )


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Engine`` keyword arguments those flags set."""
    return {
        "compute_format": args.compute_format,
        "kv_bits": args.kv_bits,
        "max_kv_size": args.max_kv_size,
    }
