"""Models on disk: list what is cached or converted, pull catalog models, convert.

A thin layer over ``convert``'s public API for the web UI (and anyone else) so that
callers never import ``convert`` themselves. Progress shows as tqdm bars on stderr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from convert import (
    CATALOG,
    ConvertOptions,
    convert_model,
    converted_dir,
    default_cache_dir,
    model_dir,
    model_path,
)

WEIGHT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class StoredModel:
    """A model on disk.

    Attributes:
        name: What to pass to ``load``: a catalog name or a directory.
        kind: ``"catalog"`` (a GGUF in the cache, maybe converted) or ``"mlx"``.
        path: The MLX directory, or the GGUF file while a catalog model is not yet
            converted; ``None`` when a catalog model is not downloaded.
        size_gb: Bytes on disk (GB); the catalog size when not downloaded.
        weights: ``"4-bit (group 32)"``, ``"float32"``, or the GGUF quantization.
        state: ``"converted"``, ``"downloaded"``, ``"not downloaded"`` or ``"local"``.
    """

    name: str
    kind: str
    path: Path | None
    size_gb: float
    weights: str
    state: str


def catalog_names() -> list[str]:
    """Names of the catalog models (fetched from the package registry on demand)."""
    return list(CATALOG)


def list_models(
    *, cache_dir: Path | None = None, search_dirs: tuple[Path, ...] = ()
) -> list[StoredModel]:
    """The catalog models and every MLX directory in the cache and ``search_dirs``.

    Args:
        cache_dir: Silica's cache; ``default_cache_dir()`` if None.
        search_dirs: Folders whose subdirectories may be MLX models (e.g. ``models``).
    """
    cache_dir = cache_dir or default_cache_dir()
    rows = [_catalog_row(name, cache_dir) for name in CATALOG]
    seen = {r.path.resolve() for r in rows if r.path is not None}
    for folder in (cache_dir / "mlx", *search_dirs):
        for path in sorted(Path(folder).glob("*/config.json")):
            directory = path.parent.resolve()
            if directory not in seen and _has_weights(directory):
                seen.add(directory)
                rows.append(_mlx_row(directory))
    return rows


def _catalog_row(name: str, cache_dir: Path) -> StoredModel:
    entry = CATALOG[name]
    mlx_dir = converted_dir(name, cache_dir=cache_dir)
    if (mlx_dir / "silica-manifest.json").exists():
        row = _mlx_row(mlx_dir)
        return StoredModel(
            name, "catalog", mlx_dir, row.size_gb, row.weights, "converted"
        )
    gguf = model_path(name, cache_dir=cache_dir)
    if gguf.is_file() and gguf.stat().st_size == entry.size:
        return StoredModel(
            name, "catalog", gguf, entry.size / 1e9, entry.quant, "downloaded"
        )
    return StoredModel(
        name, "catalog", None, entry.size / 1e9, entry.quant, "not downloaded"
    )


def _mlx_row(directory: Path) -> StoredModel:
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return StoredModel(
        str(directory),
        "mlx",
        directory,
        size / 1e9,
        describe_weights(directory),
        "local",
    )


def _has_weights(directory: Path) -> bool:
    return any(p.suffix in WEIGHT_SUFFIXES for p in directory.iterdir())


def describe_weights(directory: Path) -> str:
    """How a model directory stores its weights, from its config.json."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    quant = config.get("quantization") or {}
    if isinstance(quant, dict) and "bits" in quant:
        return f"{quant['bits']}-bit (group {quant.get('group_size', '?')})"
    return str(config.get("torch_dtype") or config.get("dtype") or "float")


def pull_model(name: str, *, cache_dir: Path | None = None) -> Path:
    """Download a catalog model and convert it into the cache (both once).

    Returns:
        The MLX directory ``load(name)`` uses.

    Raises:
        ValueError: ``name`` is not in the catalog.
        CatalogError: The download failed or did not verify.
    """
    if name not in CATALOG:
        raise ValueError(
            f"{name!r} is not a catalog model; pick one of {list(CATALOG)}."
        )
    return model_dir(name, cache_dir=cache_dir, progress=True)


def convert_checkpoint(
    src: str,
    out: Path,
    *,
    bits: int | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Convert a GGUF file or a Hugging Face directory into an MLX directory.

    Args:
        src: A ``.gguf`` file, a Hugging Face / MLX directory or a catalog name.
        out: Output directory, written atomically.
        bits: Quantize float weights to this many bits; ``None`` keeps them.
        dtype: ``float16``, ``bfloat16`` or ``float32``; ``None`` picks per backend.
        force: Replace ``out`` if it exists.

    Returns:
        ``out``.

    Raises:
        ValueError: Bad options, or ``out`` exists without ``force``.
        ModelFileError: A source file is malformed.
    """
    if not src or not src.strip():
        raise ValueError("Give a .gguf file or a model directory to convert.")
    options = ConvertOptions(bits=bits, dtype=dtype, force=force)
    return convert_model(src.strip(), Path(out), options, progress=True).path
