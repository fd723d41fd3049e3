"""Check a model config before mlx-lm builds a model from it.

mlx-lm builds the model a config describes before it compares a single weight, and
trusts every field: measured here (mlx-lm 0.32.2), ``"hidden_size": "64"`` raised a
TypeError deep in a layer, 0 heads a ZeroDivisionError, and 100,000 layers took 9 GB
and over a minute to build. So each size is checked to be an integer in a range no
real model leaves and each float to be finite, for config.json files and for the
configs built from GGUF metadata alike.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import mlx.nn as nn
from mlx_lm.utils import MODEL_REMAPPING

from convert.errors import ModelFileError
from convert.json_check import read_json, show

MAX_CONFIG_BYTES = 16 << 20
MODEL_TYPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MODULE_NAME = re.compile(r"[a-z0-9_]{1,64}")
# Integer fields: inclusive bounds. Real models: at most ~130 layers, 16k hidden,
# 256k vocabulary, 10M context, 256 experts.
COUNTS = {
    "num_hidden_layers": (1, 512),
    "hidden_size": (1, 1 << 17),
    "intermediate_size": (1, 1 << 20),
    "moe_intermediate_size": (1, 1 << 20),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (1, 4096),
    "vocab_size": (1, 1 << 22),
    "max_position_embeddings": (1, 1 << 24),
    "num_local_experts": (1, 4096),
    "num_experts": (1, 4096),
    "n_routed_experts": (1, 4096),
    "num_experts_per_tok": (1, 4096),
}
TOKEN_IDS = ("bos_token_id", "eos_token_id")  # not pad: old llama configs say -1
# Float fields: lower bound exclusive, upper inclusive.
FLOATS = {
    "rms_norm_eps": (0.0, 1.0),
    "layer_norm_eps": (0.0, 1.0),
    "layer_norm_epsilon": (0.0, 1.0),
    "norm_eps": (0.0, 1.0),
    "rope_theta": (0.0, 1e12),
    "partial_rotary_factor": (0.0, 1.0),
}
QUANT_FIELDS = {"bits": (1, 8), "group_size": (1, 1024)}
CONFIG_FIX = "Fix or replace config.json"


def read_config(src: Path) -> dict:
    """Read ``src/config.json`` strictly and check it with ``check_config``.

    Raises:
        ModelFileError: The file is missing, oversized, not strict JSON, or fails
            ``check_config``.
    """
    path = src / "config.json"
    if not path.exists():
        raise ModelFileError(
            src, "has no config.json", "Is it a Hugging Face model directory?"
        )
    config = read_json(path, limit=MAX_CONFIG_BYTES)
    check_config(path, config)
    return config


def check_config(path: Path, config: Any) -> None:
    """Check the fields mlx-lm builds a model from; absent fields are left to it.

    Args:
        path: The file the config came from, for the error message.
        config: The decoded config.

    Raises:
        ModelFileError: It is not an object, names an architecture mlx-lm lacks, asks
            to run its own code, or has a size, float, token id or quantization
            entry of the wrong type or out of range.
    """
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelFileError(path, 'has no "model_type" string', CONFIG_FIX)
    _check_model_type(path, config["model_type"])
    if "model_file" in config:
        raise ModelFileError(
            path,
            "asks to run its own Python file (model_file)",
            "Silica never runs code from a model directory",
        )
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            _check_fields(path, section)


def build_model(config: dict) -> nn.Module:
    """An mlx-lm model for a checked ``config``, its weights uninitialised (lazy)."""
    module = _model_module(config["model_type"])
    return module.Model(module.ModelArgs.from_dict(config))


def _model_module(model_type: str) -> ModuleType | None:
    module_name = MODEL_REMAPPING.get(model_type, model_type)
    if MODEL_TYPE.fullmatch(model_type) and MODULE_NAME.fullmatch(module_name):
        try:
            return importlib.import_module(f"mlx_lm.models.{module_name}")
        except ImportError:
            return None
    return None


def _check_model_type(path: Path, model_type: str) -> None:
    module = _model_module(model_type)
    if not (hasattr(module, "Model") and hasattr(module, "ModelArgs")):
        raise ModelFileError(
            path,
            f"architecture {show(model_type)} is unknown to mlx-lm",
            "See mlx_lm/models for the supported ones",
        )


def _check_fields(path: Path, config: dict) -> None:
    for field, (lo, hi) in COUNTS.items():
        value = config.get(field)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(_is_int(v, lo, hi) for v in values):
            raise _invalid(path, field, value, f"an integer in {lo}..{hi}")
    vocab = COUNTS["vocab_size"][1]
    for field in TOKEN_IDS:
        value = config.get(field)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(_is_int(v, 0, vocab) for v in values):
            raise _invalid(path, field, value, "a token id or a list of them")
    for field, (lo, hi) in FLOATS.items():
        if (value := config.get(field)) is not None and not _is_float(value, lo, hi):
            raise _invalid(path, field, value, f"a number in ({lo:g}, {hi:g}]")
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise _invalid(path, "rope_scaling", scaling, "an object")
    factor = (scaling or {}).get("factor", 1.0)
    if not _is_float(factor, 0.0, 1e6):
        raise _invalid(path, "rope_scaling.factor", factor, "a positive number")
    if (quantization := config.get("quantization")) is not None:
        _check_quantization(path, quantization)


def _check_quantization(path: Path, quantization: Any) -> None:
    """The default entry and each per-layer entry: int bits and group_size."""
    if not isinstance(quantization, dict):
        raise _invalid(path, "quantization", quantization, "an object")
    entries = [("quantization", quantization)]
    entries += [
        (f"quantization.{k}", v) for k, v in quantization.items() if isinstance(v, dict)
    ]
    for name, entry in entries:
        for field, (lo, hi) in QUANT_FIELDS.items():
            if not _is_int(entry.get(field), lo, hi):
                raise _invalid(
                    path, f"{name}.{field}", entry.get(field), f"an integer {lo}..{hi}"
                )
        if not isinstance(entry.get("mode", "affine"), str):
            raise _invalid(path, f"{name}.mode", entry["mode"], "a string")


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def _is_float(value: Any, lo: float, hi: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo < value <= hi
    )


def _invalid(path: Path, field: str, value: Any, expected: str) -> ModelFileError:
    return ModelFileError(
        path, f"has an invalid {field}: {show(value)} ({expected} expected)", CONFIG_FIX
    )
