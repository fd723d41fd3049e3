"""Sort model files before any parser reads them: kind, size, links, pickle.

Only names, ``stat`` and the first bytes of a file are looked at here, so a FIFO (which
blocks a reader forever), a device, a link out of the model directory, a pickle under
another name or an oversized JSON file is refused before a parser opens it (DESIGN.md,
"Files are hostile until checked"). The format checks come next: ``gguf_file``,
``safetensors_check``, ``config_check``.
"""

from __future__ import annotations

from pathlib import Path

from convert.errors import ModelFileError
from convert.json_check import MAX_JSON_BYTES
from convert.manifest import STAGING_MARK

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_FIX = (
    "Pickle can run code when it is loaded; convert it to safetensors, or pass "
    "--allow-pickle if you trust its source"
)
GGUF_MAGIC = b"GGUF"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format: a zip holding a pickle
MIN_GGUF_BYTES = 24  # magic, version, tensor count, metadata count
MAX_DIR_ENTRIES = 10_000
LINK_FIX = "Copy the file into the model directory instead of linking to it"


def sniff(path: Path) -> str:
    """``"gguf"``, ``"pickle"`` or ``"other"``, from the first bytes of ``path``."""
    with path.open("rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC:
        return "gguf"
    # Pickle protocols 2-5 open with PROTO (0x80) and the protocol number.
    if head == ZIP_MAGIC or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        return "pickle"
    return "other"


def check_gguf_source(path: Path) -> Path:
    """Check that ``path`` is a regular file that starts like GGUF and no pickle.

    Returns:
        ``path``.

    Raises:
        ModelFileError: It is not a regular file, is a pickle checkpoint (by suffix
            or content), is too short, or lacks the GGUF magic.
    """
    _check_regular(path)
    kind = sniff(path)
    if kind == "pickle" or path.suffix in PICKLE_SUFFIXES:
        raise ModelFileError(
            path,
            "is a pickle checkpoint",
            "Pickle can run code when it is loaded; convert it to safetensors, or "
            "give the directory that holds it, with config.json, and --allow-pickle "
            "if you trust its source",
        )
    if kind != "gguf":
        raise ModelFileError(
            path, "is not a GGUF file", "Give a .gguf file or a model directory"
        )
    if (size := path.stat().st_size) < MIN_GGUF_BYTES:
        raise ModelFileError(path, f"is only {size} bytes, too short for GGUF")
    return path


def check_model_dir(path: Path) -> None:
    """Check every entry of a model directory before a loader lists or opens one.

    Links must stay inside the directory (inside the repository folder for a
    Hugging Face cache snapshot, whose files link to ``../../blobs``); files must be
    regular; JSON files must be under ``MAX_JSON_BYTES``; a ``.safetensors`` file
    must not hold a pickle.

    Raises:
        ModelFileError: Naming the first entry that breaks a rule, or ``path`` if it
            is not a directory or is a conversion's unfinished staging directory.
    """
    if not path.is_dir():
        raise ModelFileError(path, "is not a directory", "Give a model directory")
    if STAGING_MARK in path.resolve().name:
        raise ModelFileError(
            path,
            "is an unfinished conversion (a staging directory)",
            "Convert the model again; Silica removes such directories once stale",
        )
    entries = sorted(path.iterdir())
    if len(entries) > MAX_DIR_ENTRIES:
        raise ModelFileError(path, f"holds over {MAX_DIR_ENTRIES} entries")
    root = link_root(path)
    for entry in entries:
        _check_entry(entry, root)


def link_root(path: Path) -> Path:
    """The folder links in model directory ``path`` may point into."""
    path = path.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith(
        "models--"
    ):
        return path.parent.parent
    return path


def pickle_files(directory: Path) -> list[Path]:
    """The files of ``directory`` with a pickle checkpoint's suffix."""
    return sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)


def _check_entry(entry: Path, root: Path) -> None:
    try:
        target = entry.resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(entry, f"is a broken or looping link ({e})") from e
    if entry.is_symlink() and not target.is_relative_to(root):
        raise ModelFileError(
            entry, f"links outside the model directory (to {target})", LINK_FIX
        )
    if target.is_dir():
        return
    _check_regular(entry)
    size = target.stat().st_size
    if entry.suffix == ".json" and size > MAX_JSON_BYTES:
        raise ModelFileError(
            entry, f"is {size} bytes, over the {MAX_JSON_BYTES}-byte limit for JSON"
        )
    if entry.suffix == ".safetensors" and sniff(target) == "pickle":
        raise ModelFileError(entry, "holds a pickle, not safetensors", PICKLE_FIX)


def _check_regular(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(path, "does not exist")
    if not path.is_file():
        raise ModelFileError(path, "is not a regular file (a device, FIFO or socket?)")
