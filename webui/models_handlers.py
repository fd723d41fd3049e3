"""The Models tab's logic: what is on disk and loaded, load/unload, pull, convert.

No Gradio here; downloads and conversions report progress as tqdm bars, which the
tab shows with ``gr.Progress(track_tqdm=True)``.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from engine import (
    ModelPool,
    catalog_names,
    convert_checkpoint,
    list_models,
    model_name,
    pull_model,
)
from webui.settings import UISettings

MODEL_COLUMNS = ["name", "kind", "state", "weights", "size (GB)", "loaded", "path"]
KEEP_BITS = "keep"
AUTO_DTYPE = "auto"


def model_choices(pool: ModelPool, settings: UISettings) -> list[str]:
    """Picker entries: loaded models, then catalog models in the cache, then local
    MLX folders (what a picker may load without downloading)."""
    names = list(pool)
    for row in list_models(search_dirs=settings.search_dirs):
        if row.state == "not downloaded":
            continue
        if row.name not in names and not _loaded_path(pool, row.path):
            names.append(row.name)
    return names


def _loaded_path(pool: ModelPool, path: Path | None) -> bool:
    if path is None:
        return False
    return any(Path(m.info.path) == Path(path) for m in pool.values())


def models_table(pool: ModelPool, settings: UISettings) -> pd.DataFrame:
    """Stored models with size and format, and which of them are loaded."""
    loaded_paths = {Path(m.info.path).resolve(): name for name, m in pool.items()}
    rows = []
    for row in list_models(search_dirs=settings.search_dirs):
        resolved = row.path.resolve() if row.path else None
        loaded = loaded_paths.pop(resolved, "") if resolved else ""
        rows.append(
            [
                row.name,
                row.kind,
                row.state,
                row.weights,
                round(row.size_gb, 3),
                loaded,
                str(row.path or ""),
            ]
        )
    for path, name in loaded_paths.items():  # loaded from elsewhere (e.g. a Hub repo)
        rows.append([name, "mlx", "local", "", "", name, str(path)])
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def loaded_table(pool: ModelPool) -> pd.DataFrame:
    """Loaded models: parameters, bits per weight, memory and context."""
    rows = [
        [
            name,
            f"{m.info.parameters / 1e6:,.1f} M",
            round(m.info.bits, 2),
            round(m.info.memory_gb, 3),
            m.info.context_length,
        ]
        for name, m in pool.items()
    ]
    columns = ["name", "parameters", "bits/weight", "memory (GB)", "context"]
    return pd.DataFrame(rows, columns=columns)


def memory_gauge(pool: ModelPool, settings: UISettings) -> str:
    """An HTML bar: MLX memory in use against the device's memory."""
    weights = pool.weights_gb()
    try:
        memory = pool.engine.memory(timeout=settings.engine_timeout_s)
    except TimeoutError:
        return (
            f"<p>Weights loaded: {weights:.2f} GB · the engine is busy; refresh "
            "after the answer.</p>"
        )
    total = memory.total_gb or max(memory.active_gb, 1e-9)
    share = min(memory.active_gb / total, 1.0)
    label = (
        f"{memory.active_gb:.2f} GB in use of {memory.total_gb:.1f} GB · "
        f"weights {weights:.2f} GB · peak {memory.peak_gb:.2f} GB · "
        f"cache {memory.cache_gb:.2f} GB"
    )
    return (
        f'<div class="silica-gauge" title="{html.escape(label)}">'
        f'<progress max="1" value="{share:.4f}" style="width:100%"></progress>'
        f"<p>{html.escape(label)}</p></div>"
    )


def load(pool: ModelPool, src: str) -> str:
    """Load a model (a name, a catalog model, a folder or a .gguf file).

    Raises:
        ValueError, ModelFileError, CatalogError: It cannot be loaded.
    """
    model = pool.get_or_load(src)
    info = model.info
    size = f"{info.parameters / 1e6:,.0f} M parameters, {info.memory_gb:.2f} GB"
    return f"Loaded {model.name}: {size}."


def unload(pool: ModelPool, name: str) -> str:
    """Free a loaded model's memory.

    Raises:
        ValueError: No model of that name is loaded.
    """
    if not pool.unload(name):
        raise ValueError(f"{name!r} is not loaded; loaded: {sorted(pool)}.")
    return f"Unloaded {name}."


def pull(name: str) -> str:
    """Download a catalog model and convert it into the cache.

    Raises:
        ValueError, CatalogError: Unknown name, or the download failed.
    """
    path = pull_model(name)
    return f"{name} is ready in {path}."


def convert(
    src: str, out: str, bits: str, dtype: str, force: bool, *, settings: UISettings
) -> str:
    """Convert a GGUF file or Hugging Face folder; ``out`` defaults to ``models/NAME``.

    Raises:
        ValueError, ModelFileError, FileExistsError: Bad options, a malformed
            source, an output folder outside the model folders, or one that
            exists (without ``force``).
    """
    if not src or not src.strip():
        raise ValueError("Give the path of a .gguf file or a model folder.")
    bits_value = None if bits in (None, "", KEEP_BITS) else int(bits)
    suffix = f"-{bits_value}bit" if bits_value else "-mlx"
    target = _output_dir(
        out
        if out and out.strip()
        else settings.search_dirs[0] / f"{model_name(src.strip())}{suffix}",
        settings,
    )
    dtype_value = None if dtype in (None, "", AUTO_DTYPE) else dtype
    path = convert_checkpoint(
        src, target, bits=bits_value, dtype=dtype_value, force=force
    )
    return f"Converted into {path}; load it by that path."


def _output_dir(out: str | Path, settings: UISettings) -> Path:
    """Where a conversion may write: inside a model folder, symlinks followed."""
    target = Path(str(out).strip()).expanduser().resolve()
    if not any(target.is_relative_to(d.resolve()) for d in settings.search_dirs):
        folders = ", ".join(str(d) for d in settings.search_dirs)
        raise ValueError(
            f"Convert into one of the model folders ({folders}), not {target}."
        )
    return target


def catalog() -> list[str]:
    """The catalog models for the pull picker."""
    return catalog_names()
