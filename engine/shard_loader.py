"""Load this rank's shard of a model and check that every rank loaded the same way.

Runs on the thread that makes the group's collectives (rank 0's engine worker, the
main thread of the others).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.utils import sharded_load

from convert import check_safetensors_dir, is_sharded, load_shard
from convert import model_dir as resolve_model_dir

MODES = ("pipeline", "tensor")


def model_path(src: str) -> Path:
    """A sharded layout as is; anything else through ``model_dir`` (conversion)."""
    return Path(src) if is_sharded(Path(src)) else resolve_model_dir(src)


def load_sharded(path: Path, group: Any, mode: str) -> tuple[Any, Any, dict, str]:
    """This rank's shard: from a ``--shards`` layout, else mlx-lm's ``sharded_load``.

    Returns:
        ``(model, tokenizer, config, mode)``.

    Raises:
        ValueError: The layout was written for another mode or group size, or the
            architecture does not support ``mode``.
    """
    if is_sharded(path):
        model, tokenizer, config, written = load_shard(path, group)
        if written != mode:
            raise ValueError(
                f"{path} was split for {written} mode; start with --shard-mode "
                f"{written} or re-run `silica convert --shard-mode {mode}`."
            )
        return model, tokenizer, config, mode
    check_safetensors_dir(path)
    try:
        model, tokenizer, config = sharded_load(
            str(path),
            pipeline_group=group if mode == "pipeline" else None,
            tensor_group=group if mode == "tensor" else None,
            return_config=True,
        )
    except ValueError as e:  # no such sharding, or heads that do not divide
        other = MODES[1 - MODES.index(mode)]
        raise ValueError(f"Cannot shard {path} by {mode}: {e}; try {other}.") from e
    return model, tokenizer, config, mode


def agree(group: Any, mode: str) -> None:
    """Barrier after loading; every rank must have loaded the same mode.

    Raises:
        ValueError: The ranks were started with different modes.
    """
    code = MODES.index(mode) + 1
    total = mx.distributed.all_sum(mx.array([1, code]), group=group, stream=mx.cpu)
    if total.tolist() != [group.size(), group.size() * code]:
        raise ValueError("The ranks loaded different shard modes; pass the same flags.")
