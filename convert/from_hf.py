"""Convert a Hugging Face safetensors (or MLX) directory with mlx-lm's quantizers."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.convert import mixed_quant_predicate_builder
from mlx_lm.utils import dequantize_model, load, quantize_model

from convert.config_check import read_config
from convert.errors import ModelFileError
from convert.json_check import show
from convert.manifest import check_manifest
from convert.options import ConvertOptions
from convert.safetensors_check import check_safetensors_dir
from convert.triage import PICKLE_FIX, PICKLE_SUFFIXES, check_model_dir, pickle_files
from convert.weights_fit import check_weights_fit

COPIED_FILES = ("generation_config.json",)
DEFAULT_GROUP_SIZE = 64
QUANT_KEYS = ("quantization", "quantization_config")


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
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...
            raise ModelFileError(
                path,
                f"torch refused to unpickle it ({type(e).__name__}: "
                f"{show(str(e), 200)})",
                "It holds more than tensors, or is corrupt; nothing in it was run",
            ) from e
        if not isinstance(state, dict):
            raise ModelFileError(path, "does not hold a dict of tensors")
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

    Raises:
        ModelFileError: A file fails triage, its format check or its manifest, or
            mlx-lm cannot build the model the files describe (wrong names, shapes,
            tokenizer files); the message names the directory and the problem.
    """
    check_model_dir(src)
    check_manifest(src)
    config = read_config(src)
    if not list(src.glob("*.safetensors")) and pickle_files(src):
        if not options.allow_pickle:
            raise ModelFileError(
                src,
                f"holds only pickle weights ({pickle_files(src)[0].name})",
                PICKLE_FIX,
            )
        if scratch is None:
            raise ValueError("Unpacking a pickle checkpoint needs a scratch directory.")
        src = unpickle_to_safetensors(src, scratch)
    model_config = legacy_rope_fields(config)
    headers = check_safetensors_dir(src)
    check_weights_fit(src / "config.json", dict(config, **model_config), headers)
    try:
        return load(
            str(src),
            lazy=True,
            return_config=True,
            model_config=model_config,
        )
    except (ModelFileError, MemoryError):
        raise
    except Exception as e:  # mlx-lm and transformers raise many kinds on bad files
        raise ModelFileError(
            src,
            f"does not load as a {config['model_type']} model "
            f"({type(e).__name__}: {show(str(e), 300)})",
            "Its weights, config.json and tokenizer files must belong together",
        ) from e


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
