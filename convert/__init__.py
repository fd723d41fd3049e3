"""Turn Hugging Face and GGUF checkpoints into MLX model directories.

The public names below are what the engine, the web UI and users import; the rest of
the package is internal.
"""

from __future__ import annotations

from convert.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    CatalogError,
    default_cache_dir,
    model_path,
    pull,
)
from convert.commands import add_convert_parser, add_models_parser, run_command
from convert.conversion import ConversionResult, convert_model
from convert.errors import ModelFileError
from convert.from_hf import dequantize_model
from convert.model_dirs import converted_dir, load_checked, model_dir
from convert.options import ConvertOptions
from convert.safetensors_check import check_safetensors_dir
from convert.shards import (
    SHARD_MODES,
    apply_sharding,
    is_sharded,
    load_shard,
    write_shards,
)

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "SHARD_MODES",
    "CatalogError",
    "ConversionResult",
    "ConvertOptions",
    "ModelFileError",
    "add_convert_parser",
    "add_models_parser",
    "apply_sharding",
    "check_safetensors_dir",
    "convert_model",
    "dequantize_model",
    "converted_dir",
    "default_cache_dir",
    "is_sharded",
    "load_checked",
    "load_shard",
    "model_dir",
    "model_path",
    "pull",
    "run_command",
    "write_shards",
]
