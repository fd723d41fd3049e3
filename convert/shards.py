"""A model split for mx.distributed: one folder per rank, each loadable on its own.

``OUT/rank-R/`` holds rank R's slice of the weights (``shard.safetensors``), the
config, the tokenizer files and ``silica-shard.json``; a host needs only its own
folder. The slices are exactly what mlx-lm's ``model.shard(group)`` (tensor mode)
or ``model.model.pipeline(group)`` (pipeline mode) keep on that rank, so a rank
reads only its own bytes, where mlx-lm's ``sharded_load`` reads every tensor in
tensor mode and slices it after.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import load_tokenizer

from convert.safetensors_check import check_safetensors_dir
from convert.writer import load_model

SHARD_MODES = ("pipeline", "tensor")
SHARD_FILE = "shard.safetensors"
SHARD_META = "silica-shard.json"
SKIPPED = {"model.safetensors.index.json", "silica-manifest.json", "config.json"}


@dataclass(frozen=True)
class RankSlot:
    """Stands in for an ``mx.distributed.Group`` when only rank and size matter."""

    index: int
    count: int

    def rank(self) -> int:
        return self.index

    def size(self) -> int:
        return self.count


def rank_dir(root: Path, rank: int) -> Path:
    """The folder of rank ``rank`` in a sharded layout."""
    return Path(root) / f"rank-{rank}"


def is_sharded(path: Path) -> bool:
    """True if ``path`` is a layout written by ``write_shards`` (any rank present)."""
    path = Path(path)
    return path.is_dir() and any(path.glob(f"rank-*/{SHARD_META}"))


def apply_sharding(model: nn.Module, mode: str, group: Any) -> None:
    """Shard ``model`` in place for ``group`` the way mlx-lm's models do it.

    Raises:
        ValueError: ``mode`` is unknown or the architecture does not support it.
    """
    if mode == "tensor":
        _check_heads(model, group.size())
        if not hasattr(model, "shard"):
            raise ValueError(
                f"{type(model).__module__} has no tensor-parallel sharding; "
                "use --shard-mode pipeline."
            )
        model.shard(group)
    elif mode == "pipeline":
        if not hasattr(getattr(model, "model", None), "pipeline"):
            raise ValueError(
                f"{type(model).__module__} has no pipeline sharding in this mlx-lm; "
                "use --shard-mode tensor."
            )
        model.model.pipeline(group)
    else:
        raise ValueError(f"Shard mode must be one of {SHARD_MODES}, got {mode!r}.")


def _check_heads(model: nn.Module, size: int) -> None:
    """mlx-lm's ``shard`` divides head counts without checking; a remainder is wrong."""
    args = getattr(model, "args", None)
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(args, key, None)
        if isinstance(heads, int) and heads % size:
            raise ValueError(
                f"{key}={heads} does not split evenly across {size} ranks; use "
                "pipeline mode or a rank count that divides it"
            )


def write_shards(
    src: Path, dst: Path, *, size: int, mode: str, force: bool = False
) -> Path:
    """Split the MLX model directory ``src`` into ``size`` rank folders under ``dst``.

    Args:
        src: An MLX model directory (``silica convert`` output).
        dst: Output directory; written atomically (a staging folder, then rename).
        size: Number of ranks, at least 2.
        mode: ``"pipeline"`` (layers split across ranks) or ``"tensor"`` (every
            layer's matrices split across ranks).
        force: Replace ``dst`` if it exists.

    Returns:
        ``dst``.

    Raises:
        ValueError: Bad ``size``/``mode``, ``dst`` exists, or the model cannot be
            split that way (e.g. heads not divisible by ``size``).
        ModelFileError: A file of ``src`` is malformed.
    """
    src, dst = Path(src), Path(dst)
    if size < 2:
        raise ValueError(f"--shards must be at least 2, got {size}.")
    if mode not in SHARD_MODES:
        raise ValueError(f"--shard-mode must be one of {SHARD_MODES}, got {mode!r}.")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} exists; pass --force to replace it.")
    check_safetensors_dir(src)
    staging = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for rank in range(size):
        _write_rank(src, rank_dir(staging, rank), RankSlot(rank, size), mode)
    if dst.exists():
        shutil.rmtree(dst)
    staging.rename(dst)
    return dst


def _write_rank(src: Path, out: Path, slot: RankSlot, mode: str) -> None:
    model, config = load_model(src, lazy=True, strict=True)
    quantized = _quantized_layers(model)
    try:
        apply_sharding(model, mode, slot)
    except ValueError as e:  # e.g. "Cannot shard the output of size 9 across 2"
        raise ValueError(f"Cannot split {src} {slot.count} ways by {mode}: {e}") from e
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in SKIPPED:
            shutil.copy2(f, out / f.name)
    if quantized:  # the loader builds the skeleton before it has any weights
        config["quantization"] = {**config.get("quantization", {}), **quantized}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / SHARD_FILE), weights, metadata={"format": "mlx"})
    meta = {"rank": slot.index, "size": slot.count, "mode": mode, "source": src.name}
    (out / SHARD_META).write_text(json.dumps(meta, indent=2))


def _quantized_layers(model: nn.Module) -> dict[str, dict]:
    """Each quantized layer's settings, so a skeleton quantizes without weights."""
    return {
        path: {"group_size": m.group_size, "bits": m.bits, "mode": m.mode}
        for path, m in model.named_modules()
        if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)
    }


def read_shard_meta(root: Path, rank: int, size: int) -> dict:
    """Rank ``rank``'s metadata, checked against the group it joins.

    Raises:
        ValueError: The folder is missing or was written for another group size.
    """
    meta_path = rank_dir(root, rank) / SHARD_META
    if not meta_path.is_file():
        raise ValueError(
            f"{meta_path} is missing: copy {rank_dir(root, rank)} (written by "
            "`silica convert --shards`) to this host at the same path."
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("size") != size or meta.get("rank") != rank:
        raise ValueError(
            f"{rank_dir(root, rank)} was written for rank {meta.get('rank')} of "
            f"{meta.get('size')}; this group has {size} ranks. Re-run "
            f"`silica convert --shards {size}`."
        )
    if meta.get("mode") not in SHARD_MODES:
        raise ValueError(f"{meta_path} names an unknown mode {meta.get('mode')!r}.")
    return meta


def load_shard(root: Path, group: Any) -> tuple[nn.Module, Any, dict, str]:
    """Load this rank's folder of a sharded layout, reading no other rank's bytes.

    Args:
        root: The layout's root (``OUT`` of ``silica convert --shards``).
        group: The ``mx.distributed.Group`` (or anything with ``rank``/``size``).

    Returns:
        ``(model, tokenizer, config, mode)``; the model holds only this rank's slice.

    Raises:
        ValueError: The folder is missing or written for another group.
        ModelFileError: The shard file is malformed.
    """
    rank, size = group.rank(), group.size()
    mode = read_shard_meta(root, rank, size)["mode"]
    folder = rank_dir(root, rank)
    check_safetensors_dir(folder)
    # No model*.safetensors here, so this builds the (lazy) skeleton only.
    model, config = load_model(folder, lazy=True, strict=False)
    apply_sharding(model, mode, group)
    model.load_weights(str(folder / SHARD_FILE), strict=True)
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer, config, mode
