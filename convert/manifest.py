"""The manifest that marks a converted directory complete; the mark of unfinished ones.

A conversion writes into a staging directory whose name holds ``STAGING_MARK`` and
writes ``MANIFEST`` (every file's size and sha256) last, just before the rename; so a
directory with a staging name, or whose files disagree with its manifest, is not a
finished model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from convert.errors import ModelFileError
from convert.json_check import read_json, show

MANIFEST = "silica-manifest.json"
STAGING_MARK = ".silica-tmp-"
MANIFEST_FORMAT = "silica-mlx-1"
MAX_MANIFEST_BYTES = 16 << 20
CHANGED_FIX = "The directory changed after it was converted; convert the model again"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(staging: Path, extra: dict) -> None:
    """List every file with size and sha256, fsync them, and write the manifest last.

    The staging directory itself is flushed too, so its entries are on disk before
    the caller renames it into place.
    """
    files = {}
    for path in sorted(staging.iterdir()):
        fsync_path(path)
        files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format": MANIFEST_FORMAT, "created": time.time(), **extra}
    manifest["files"] = files
    with open(staging / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(staging)


def check_manifest(directory: Path, *, hashes: bool = False) -> bool:
    """Check a directory against its manifest, if it has one.

    Every listed file must be there; weight files (``*.safetensors``) with their
    size, all files with their sha256 when ``hashes`` is asked; and every weight
    file must be listed. Other files (a chat template fixed by hand, say) may have
    changed: their own checks judge them.

    Returns:
        Whether the directory has a manifest.

    Raises:
        ModelFileError: The manifest is malformed, or a file is missing, differs
            from it, or is a weight file it does not list.
    """
    path = directory / MANIFEST
    if not path.exists():
        return False
    files = read_json(path, limit=MAX_MANIFEST_BYTES)
    files = files.get("files") if isinstance(files, dict) else None
    if not isinstance(files, dict) or not all(map(_is_entry, files.values())):
        raise ModelFileError(path, 'has no "files" object of sizes and hashes')
    for name, entry in files.items():
        _check_file(directory, name, entry, hashes=hashes)
    weights = {p.name for p in directory.glob("*.safetensors")}
    if extra := sorted(weights - files.keys()):
        raise ModelFileError(
            directory / extra[0], "is not in the manifest", CHANGED_FIX
        )
    return True


def _is_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and type(entry.get("size")) is int
        and isinstance(entry.get("sha256"), str)
    )


def _check_file(directory: Path, name: str, entry: dict, *, hashes: bool) -> None:
    manifest = directory / MANIFEST
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelFileError(manifest, f"lists {show(name)}, not a file name")
    path = directory / name
    if not path.is_file():
        raise ModelFileError(path, "is listed in the manifest but missing", CHANGED_FIX)
    weights = path.suffix == ".safetensors"
    if weights and (size := path.stat().st_size) != entry["size"]:
        raise ModelFileError(
            path, f"is {size} bytes, the manifest says {entry['size']}", CHANGED_FIX
        )
    if hashes and sha256_file(path) != entry["sha256"]:
        raise ModelFileError(path, "does not match its sha256 in the manifest")
