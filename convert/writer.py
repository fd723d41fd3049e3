"""Write an MLX model directory atomically: stage, shards, config, manifest, rename.

The output is mlx-lm's format (config.json with a ``quantization`` entry, safetensors
shards with an index, tokenizer files), so ``mlx_lm.load`` reads it. Nothing appears at
the destination until every file is written, flushed and checked to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx
from mlx_lm.utils import load_model, save_config
from tqdm import tqdm

from convert.manifest import MANIFEST, STAGING_MARK, fsync_path, write_manifest

__all__ = ["MANIFEST", "STAGING_MARK", "check_destination", "write_model"]

MAX_SHARD_BYTES = 5 << 30  # mlx-lm's shard size
STALE_AFTER_S = 3600.0
DISK_MARGIN = 1.05

Weights = Iterator[dict[str, mx.array]]


def check_destination(dst: Path, *, force: bool, needed_bytes: int) -> None:
    """Refuse an existing destination (unless ``force``) or a disk without room.

    Raises:
        FileExistsError: ``dst`` exists and ``force`` is false.
        OSError: The filesystem of ``dst`` has less free space than ``needed_bytes``.
    """
    if dst.exists() and not force:
        raise FileExistsError(
            f"{dst} already exists; choose another -o or pass --force."
        )
    parent = dst.absolute().parent
    while not parent.exists():  # the filesystem that will hold the new directories
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed_bytes * DISK_MARGIN:
        raise OSError(
            f"Not enough disk space for {dst}: the model needs "
            f"{needed_bytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB is free. Free some space or write elsewhere."
        )


def write_model(
    dst: Path,
    weights: Weights,
    config: dict,
    *,
    save_tokenizer: Callable[[Path], None],
    total: int,
    force: bool = False,
    manifest: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write ``weights`` and ``config`` as an MLX model directory at ``dst``.

    Args:
        dst: The output directory; it appears only when complete.
        weights: Yields dicts of MLX arrays (one per source tensor); each is evaluated
            and written in turn, so peak memory stays near one shard.
        config: The model config; mlx-lm's ``save_config`` writes it.
        save_tokenizer: Writes tokenizer files into the directory it is given.
        total: How many dicts ``weights`` yields, for the progress bar.
        force: Replace ``dst`` if it exists.
        manifest: Extra fields for the manifest (source, options).
        progress: Show a progress bar of tensors done.

    Returns:
        ``dst``.

    Raises:
        ValueError: The written directory does not load as an mlx-lm model.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst.parent)
    # Not mkdtemp: its 0700 mode would become the model directory's, once renamed.
    staging = dst.parent / f"{_staging_prefix(dst)}{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        _write_shards(staging, weights, total=total, progress=progress)
        save_config(dict(config), staging / "config.json")
        save_tokenizer(staging)
        # Loading lazily checks names and shapes against mlx-lm's model class.
        load_model(staging, lazy=True, strict=True)
        write_manifest(staging, manifest or {})
        _replace(staging, dst, force=force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dst


def _write_shards(
    staging: Path, weights: Weights, *, total: int, progress: bool
) -> None:
    shard: dict[str, mx.array] = {}
    shard_bytes, files, weight_map = 0, [], {}

    def flush() -> None:
        nonlocal shard, shard_bytes
        name = f"model-{len(files) + 1:05d}.safetensors"
        mx.save_safetensors(str(staging / name), shard, metadata={"format": "mlx"})
        files.append(name)
        weight_map.update(dict.fromkeys(shard, name))
        shard, shard_bytes = {}, 0

    for arrays in tqdm(
        weights, total=total, desc="tensors", unit="t", disable=not progress
    ):
        mx.eval(list(arrays.values()))
        size = sum(a.nbytes for a in arrays.values())
        if shard and shard_bytes + size > MAX_SHARD_BYTES:
            flush()
        shard.update(arrays)
        shard_bytes += size
    if shard or not files:
        flush()
    _name_shards(staging, files, weight_map)


def _name_shards(staging: Path, files: list[str], weight_map: dict[str, str]) -> None:
    """Rename shards to mlx-lm's ``model-0000i-of-0000n`` scheme and write the index."""
    n = len(files)
    final = {
        f: "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        for i, f in enumerate(files, 1)
    }
    for old, new in final.items():
        os.replace(staging / old, staging / new)
    index = {
        "metadata": {
            "total_size": sum((staging / f).stat().st_size for f in final.values())
        },
        "weight_map": {k: final[v] for k, v in sorted(weight_map.items())},
    }
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))


def _replace(staging: Path, dst: Path, *, force: bool) -> None:
    old = None
    if dst.exists():
        if not force:
            raise FileExistsError(
                f"{dst} appeared during the conversion; nothing was replaced."
            )
        old = dst.with_name(f"{_staging_prefix(dst)}old")
        os.replace(dst, old)
    os.replace(staging, dst)
    fsync_path(dst.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _staging_prefix(dst: Path) -> str:
    """``.<name>.silica-tmp-<host>-<pid>-``: who is writing, for ``is_stale``."""
    return f".{dst.name}{STAGING_MARK}{_host_tag()}-{os.getpid()}-"


def is_stale(path: Path, *, older_than_s: float = STALE_AFTER_S) -> bool:
    """Was staging directory ``path`` left by a conversion that no longer runs?

    It is when the process named in it is gone from this host, or, for one written
    by another host (or an older Silica), when it is older than ``older_than_s``.
    """
    if time.time() - path.lstat().st_mtime > older_than_s:
        return True
    host, _, rest = path.name.partition(STAGING_MARK)[2].partition("-")
    pid = rest.partition("-")[0]
    if host != _host_tag() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's
        return False
    return False


def remove_stale_staging(
    parent: Path, *, older_than_s: float = STALE_AFTER_S
) -> list[Path]:
    """Delete staging directories that a killed conversion left in ``parent``."""
    removed = []
    for path in sorted(parent.glob(f".*{STAGING_MARK}*")):
        if (
            path.is_dir()
            and not path.is_symlink()
            and is_stale(path, older_than_s=older_than_s)
        ):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
