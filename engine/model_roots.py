"""What a request may load: an allow-list of model roots, never a download.

A request (the web UI's pickers, the Models tab's Load button) names a model; it
resolves to a catalog model already in the cache, or to a path whose real location
(symlinks followed) lies inside one of the roots. Anything else is refused, so no
request can make the server read elsewhere on disk or fetch from the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from convert import CATALOG, converted_dir, model_path

MANIFEST = "silica-manifest.json"


def inside_roots(src: str | Path, roots: Sequence[Path]) -> Path:
    """The real path of ``src`` when it lies inside one of ``roots``.

    Raises:
        ValueError: It does not exist, or resolves (through ``..`` or a symlink)
            outside every root.
    """
    path = Path(src).expanduser()
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise ValueError(f"{str(src)[:200]!r} does not exist.") from None
    for root in roots:
        try:
            if real.is_relative_to(Path(root).expanduser().resolve()):
                return real
        except OSError:
            continue
    names = ", ".join(str(r) for r in roots) or "none"
    raise ValueError(
        f"{str(src)[:200]!r} is outside the model folders this server loads from "
        f"({names}); move the model into one (start the server with --model-root "
        "DIR to add one)."
    )


def is_stored(name: str, cache_dir: Path) -> bool:
    """Whether catalog model ``name`` is in the cache (converted or downloaded)."""
    if (converted_dir(name, cache_dir=cache_dir) / MANIFEST).exists():
        return True
    gguf = model_path(name, cache_dir=cache_dir)
    return gguf.is_file() and gguf.stat().st_size == CATALOG[name].size


def allowed_source(src: str, roots: Sequence[Path], cache_dir: Path) -> str:
    """What to load for a request naming ``src``: a stored catalog name or a path.

    Args:
        src: A catalog model's name, or a model directory or ``.gguf`` file.
        roots: Folders whose contents requests may load.
        cache_dir: Silica's cache; catalog models and conversions live there.

    Returns:
        The catalog name, or the real path (symlinks resolved) to load.

    Raises:
        ValueError: A catalog model that is not downloaded yet, a path outside the
            roots, or anything else (a Hub repo id, a URL): nothing is fetched.
    """
    if src.lower() in CATALOG and not _exists(src):
        if is_stored(src.lower(), cache_dir):
            return src.lower()
        raise ValueError(
            f"{src} is not downloaded yet; pull it first (Models tab -> Pull, or "
            f"`silica models pull {src.lower()}`)."
        )
    if not _exists(src):
        raise ValueError(
            f"{src[:200]!r} is not a loaded model, a downloaded catalog model or a "
            "model folder on this server; requests never download models (pull "
            "catalog models first, or start the server with --model)."
        )
    return str(inside_roots(src, (*roots, cache_dir)))


def _exists(src: str) -> bool:
    try:
        return Path(src).expanduser().exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False
