"""Find or make the MLX directory behind a model name, converting into the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from convert import catalog
from convert.conversion import convert_model
from convert.from_hf import load_lazy
from convert.manifest import MANIFEST
from convert.options import ConvertOptions
from convert.source import resolve_source


def converted_dir(name_or_path: str, *, cache_dir: Path | None = None) -> Path:
    """The cache directory a catalog model or GGUF file converts into."""
    root = (cache_dir or catalog.default_cache_dir()) / "mlx"
    if name_or_path.lower() in catalog.CATALOG and not Path(name_or_path).exists():
        return root / name_or_path.lower()
    path = Path(name_or_path).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return root / f"{path.stem}-{digest}"


def model_dir(
    name_or_path: str, *, cache_dir: Path | None = None, progress: bool = True
) -> Path:
    """An MLX-loadable directory for ``name_or_path``.

    Model directories (Hugging Face or MLX layout) are used where they are; catalog
    names and GGUF files are converted once, keeping their own quantization, into
    ``<cache>/mlx/``.

    Raises:
        ModelFileError, ValueError, ConnectionError: As ``convert_model`` does.
    """
    source = resolve_source(name_or_path, cache_dir=cache_dir, progress=progress)
    if source.kind == "hf":
        return source.path
    dst = converted_dir(name_or_path, cache_dir=cache_dir)
    if not (dst / MANIFEST).exists():  # complete: written last, before the rename
        convert_model(
            str(source.path), dst, ConvertOptions(force=True), progress=progress
        )
    return dst


def load_checked(path: Path) -> tuple:
    """Check a model directory's files, then load ``(model, tokenizer, config)``.

    Every check of docs/FILES.md runs first, in pure Python; pickle weights are
    refused (there is no ``allow_pickle`` here).

    Raises:
        ModelFileError: A file is hostile, malformed or does not fit the others.
    """
    return load_lazy(Path(path), ConvertOptions())
