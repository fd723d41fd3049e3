"""The mlx-lm functions we call still take the arguments we pass (fails on upgrade)."""

from __future__ import annotations

import inspect

from mlx_lm.convert import mixed_quant_predicate_builder
from mlx_lm.utils import (
    MODEL_REMAPPING,
    dequantize_model,
    load,
    load_model,
    quantize_model,
    save_config,
)


def params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def test_loading_signatures():
    assert {"path_or_hf_repo", "lazy", "return_config", "trust_remote_code"} <= params(
        load
    )
    assert {"model_path", "lazy", "strict"} <= params(load_model)


def test_quantization_signatures():
    assert {"model", "config", "group_size", "bits", "quant_predicate"} <= params(
        quantize_model
    )
    assert {"recipe", "model", "group_size"} <= params(mixed_quant_predicate_builder)
    assert {"model"} <= params(dequantize_model)
    assert {"config", "config_path"} <= params(save_config)


def test_remapping_table_is_a_dict():
    assert MODEL_REMAPPING.get("mistral") == "llama"
