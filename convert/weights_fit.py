"""Check that the weight files fit the model their config describes, before mlx-lm
quantizes that model.

mlx-lm infers each quantized layer's group size as ``inputs // scale columns``, from
the layer its config builds and the scales in the file, and hands it to
``mx.quantize``. Measured here (mlx 0.32.4): a group size of 0 (more scale columns
than inputs, from a scales tensor of another shape or a config.json whose sizes were
changed) kills the process with SIGFPE, which Python cannot catch.
"""

from __future__ import annotations

from pathlib import Path

from convert.config_check import build_model
from convert.errors import ModelFileError
from convert.json_check import show
from convert.safetensors_check import SafetensorsHeader

FIT_FIX = "config.json and the weights describe different models"


def check_weights_fit(
    config_path: Path, config: dict, headers: list[SafetensorsHeader]
) -> None:
    """Every ``<layer>.scales`` tensor must divide its layer's inputs into groups.

    Args:
        config_path: Where ``config`` was read, for the error message.
        config: A config that passed ``check_config``.
        headers: The checked headers of the model's safetensors files.

    Raises:
        ModelFileError: mlx-lm cannot build the model ``config`` describes, or a
            scales tensor does not fit its layer (naming its file).
    """
    try:
        model = build_model(config)
    except Exception as e:  # TypeError, ValueError, ZeroDivisionError, ...
        raise ModelFileError(
            config_path,
            f"describes no model mlx-lm can build ({type(e).__name__}: "
            f"{show(str(e), 200)})",
            "Fix or replace config.json",
        ) from e
    modules = dict(model.named_modules())
    for header in headers:
        for name, entry in header.tensors.items():
            layer, _, leaf = name.rpartition(".")
            weight = getattr(modules.get(layer), "weight", None)
            if leaf != "scales" or weight is None or not weight.shape:
                continue  # names mlx-lm's sanitize maps elsewhere are left to it
            inputs, groups = weight.shape[-1], entry.shape[-1] if entry.shape else 0
            if not 1 <= groups <= inputs or inputs % groups:
                raise ModelFileError(
                    Path(header.path),
                    f"tensor {show(name)} has {groups} scale groups for a layer of "
                    f"{inputs} inputs",
                    FIT_FIX,
                )
