"""Convert a Hugging Face safetensors (or MLX) directory with mlx-lm's quantizers."""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.convert import mixed_quant_predicate_builder
from mlx_lm.utils import MODEL_REMAPPING, dequantize_model, load, quantize_model

from convert.errors import ModelFileError
from convert.options import ConvertOptions
from convert.safetensors_check import check_safetensors_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
COPIED_FILES = ("generation_config.json",)
DEFAULT_GROUP_SIZE = 64
QUANT_KEYS = ("quantization", "quantization_config")


def read_config(src: Path) -> dict:
    """Read ``config.json``: strict JSON, an object, a model type mlx-lm knows.

    Raises:
        ModelFileError: The file is missing, malformed or names an unknown architecture.
    """
    path = src / "config.json"
    if not path.is_file():
        raise ModelFileError(
            src, "has no config.json", "Is it a Hugging Face model directory?"
        )
    try:
        config = json.loads(
            path.read_bytes().decode("utf-8"), parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(path, f"is not valid JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelFileError(
            path, 'has no "model_type" string', "The config is malformed"
        )
    model_type = MODEL_REMAPPING.get(config["model_type"], config["model_type"])
    try:
        importlib.import_module(f"mlx_lm.models.{model_type}")
    except ImportError as e:
        raise ModelFileError(
            path,
            f"architecture {config['model_type']!r} is unknown to mlx-lm",
            "See mlx_lm/models for the supported ones",
        ) from e
    return config


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def pickle_files(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)


def unpickle_to_safetensors(src: Path, staging: Path) -> Path:
    """Copy a pickle checkpoint into ``staging`` as safetensors (--allow-pickle only).

    torch's ``weights_only`` loader refuses arbitrary objects, so no code runs.
    """
    try:
        import torch
    except ImportError as e:
        raise ModelFileError(
            src,
            "holds pickle weights and torch is not installed",
            "pip install torch, or convert to safetensors first",
        ) from e
    from safetensors.torch import save_file

    for path in src.iterdir():
        if path.is_file() and path.suffix not in PICKLE_SUFFIXES:
            shutil.copy(path, staging / path.name)
    for i, path in enumerate(pickle_files(src)):
        state = torch.load(path, map_location="cpu", weights_only=True)
        tensors = {
            k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)
        }
        save_file(tensors, str(staging / f"model-{i:05d}.safetensors"))
    return staging


def load_lazy(
    src: Path, options: ConvertOptions, *, scratch: Path | None = None
) -> tuple[nn.Module, object, dict]:
    """Check the files, then load model, tokenizer and config with mlx-lm (lazily).

    Pickle checkpoints (only with ``options.allow_pickle``) are unpacked into
    ``scratch``, which must outlive the returned model.
    """
    config = read_config(src)
    if not list(src.glob("*.safetensors")) and pickle_files(src):
        if not options.allow_pickle:
            raise ModelFileError(
                src,
                f"holds only pickle weights ({pickle_files(src)[0].name})",
                "Pickle can run code when loaded; convert it to safetensors, or pass "
                "--allow-pickle if you trust the source",
            )
        if scratch is None:
            raise ValueError("Unpacking a pickle checkpoint needs a scratch directory.")
        src = unpickle_to_safetensors(src, scratch)
    check_safetensors_dir(src)
    return load(
        str(src), lazy=True, return_config=True, model_config=legacy_rope_fields(config)
    )


def legacy_rope_fields(config: dict) -> dict:
    """``rope_theta`` / ``rope_scaling`` from transformers 5's ``rope_parameters``.

    transformers 5 writes only ``rope_parameters``; mlx-lm's llama-style models read
    the older top-level fields and silently fall back to ``rope_theta=10000``.
    """
    rope = config.get("rope_parameters")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    if not isinstance(theta, int | float):
        return {}  # absent, or nested per layer type (models that read it themselves)
    fields = {} if "rope_theta" in config else {"rope_theta": theta}
    if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        fields["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return fields


def prepare_model(model: nn.Module, config: dict, options: ConvertOptions) -> dict:
    """Cast floats to the target dtype and quantize as asked; returns the new config.

    Note: ``model`` is updated in place (lazily; nothing is computed yet).
    """
    dtype = options.mx_dtype()
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def cast(path: str, v: mx.array) -> mx.array:
        if cast_predicate(path) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    if options.dequantize:
        dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in QUANT_KEYS}
    model.update(tree_map_with_path(cast, model.parameters()))
    config = dict(config, torch_dtype=options.dtype or str(dtype).split(".")[-1])
    if not options.quantizes:
        return config
    group_size = options.group_size or DEFAULT_GROUP_SIZE
    predicate = None
    if options.recipe:
        predicate = mixed_quant_predicate_builder(options.recipe, model, group_size)
    _, config = quantize_model(
        model, config, group_size, options.bits or 4, quant_predicate=predicate
    )
    return config


def iter_weights(model: nn.Module) -> Iterator[dict[str, mx.array]]:
    """Yield the model's parameters one tensor at a time."""
    for name, array in tree_flatten(model.parameters()):
        yield {name: array}


def save_hf_tokenizer(src: Path, tokenizer: object) -> Callable[[Path], None]:
    """A writer of the tokenizer files plus the generation config of the source."""

    def save(dst: Path) -> None:
        tokenizer.save_pretrained(str(dst))
        for name in COPIED_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, dst / name)

    return save
