"""int8 weights on the skinny-GEMM kernel: products, model copies, drafting."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest

from engine import int8_linear
from engine.decode import LoadedModel
from engine.int8_linear import Int8Linear
from tests.test_fast_blas import NEEDS_FAST_PATH, run_fast

# Runs in a child process on the fast path: each product of Int8Linear against the
# float32 product of its dequantized weights, whether a row's result depends on the
# other rows (not on the kernel, up to 16 rows), and whether the kernel counted it.
PRODUCTS = r"""
import ctypes, json, sys
import mlx.core as mx, numpy as np
from engine.int8_linear import Int8Linear, available
calls = lambda: ctypes.c_long.in_dll(ctypes.CDLL(None), "silica_int8_calls").value
rng = np.random.default_rng(0)
out = []
for m, k, n, bias, layout in json.loads(sys.argv[1]):
    x = rng.standard_normal((m, k), dtype=np.float32)
    # "c": rows in order; "f": stored column by column, as a transposed view is
    xs = mx.array(x)[None] if layout == "c" else mx.array(np.ascontiguousarray(x.T)).T
    w = mx.array(rng.standard_normal((n, k), dtype=np.float32))
    b = mx.array(rng.standard_normal(n, dtype=np.float32)) if bias else None
    layer = Int8Linear(w, b)
    dequantized = layer.packed.view(mx.int8).astype(mx.float32) * layer.scales[:, None]
    want = np.array(mx.array(x) @ dequantized.T + (b if bias else 0))
    before = calls()
    got = layer(xs)
    mx.eval(got)
    counted = calls() - before
    row0 = np.array(layer(mx.array(x[:1])))[0]
    g = np.array(got).reshape(m, n)
    out.append({"counted": counted, "shape": list(got.shape),
                "row0_same": bool(np.array_equal(row0, g[0])),
                "err": float(np.abs(g - want).max() / np.abs(want).max())})
print(json.dumps({"available": available(), "products": out}))
"""

# An int8 copy of a random llama (output layer tied to the embedding, or not) against
# the same model with its layers' and output layer's weights dequantized, for a few
# tokens (the kernel) and a prompt (OpenBLAS); the original model left as it was,
# sharing its other arrays with the copy.
MODEL = r"""
import json
import mlx.core as mx, mlx.nn as nn, numpy as np
from mlx.utils import tree_unflatten
from engine.int8_linear import Int8Linear, int8_copy
from tests.test_speculative import tiny_llama

def random_llama(tied):
    return tiny_llama(0, vocab=96, tied=tied)

def dequantized(layer):
    return layer.packed.view(mx.int8).astype(mx.float32) * layer.scales[:, None]

def gap(a, b):
    a, b = np.array(a), np.array(b)
    return float(np.abs(a - b).max() / np.abs(b).max())

out = {}
for tied in (False, True):
    model, reference, fresh = random_llama(tied), random_llama(tied), random_llama(tied)
    copy = int8_copy(model)
    converted = {n: m for n, m in copy.named_modules() if isinstance(m, Int8Linear)}
    reference.update(tree_unflatten(
        [(f"{name}.weight", dequantized(layer)) for name, layer in converted.items()]))
    head = copy.lm_head if not tied else copy.model.embed_tokens
    few = mx.array([[1, 5, 9, 70, 3, 17]])
    many = mx.array([list(range(3, 43))])
    gaps = []
    for tokens in (few, many):
        want = reference.model(tokens) @ dequantized(head).T
        gaps.append(gap(copy(tokens), want))
    out[str(tied)] = {
        "layers": sum(n.startswith("model.layers.") for n in converted),
        "linears": sum(type(m) is nn.Linear for n, m in model.named_modules()
                       if n.startswith("model.layers.")),
        "head": type(head).__name__,
        "gaps": gaps,
        "original_same": bool(np.array_equal(np.array(model(few)),
                                             np.array(fresh(few)))),
        "shares_embedding":
            copy.model.embed_tokens.weight is model.model.embed_tokens.weight,
    }
print(json.dumps(out))
"""

# The engine end to end: greedy with the model as its own draft (int8 on the kernel)
# against greedy without a draft.
ENGINE = r"""
import ctypes, json, sys
from engine import Engine
from engine.schema import SamplingParams
calls = lambda: ctypes.c_long.in_dll(ctypes.CDLL(None), "silica_int8_calls").value
with Engine(prompt_cache_bytes=0) as engine:
    target = engine.load(sys.argv[1], name="t")
    draft = engine.load(sys.argv[1], name="d")
    params = SamplingParams(max_tokens=24, temperature=0)
    plain = target.generate("Once upon a time", params)
    before = calls()
    drafted = target.generate("Once upon a time", params, draft=draft)
    print(json.dumps({"plain": plain.text, "drafted": drafted.text,
                      "int8_calls": calls() - before,
                      "accepted": drafted.stats[0].acceptance_rate}))
"""


@NEEDS_FAST_PATH
def test_products_equal_float32_products_of_the_dequantized_weights():
    # (rows, inner, outer, bias, layout): the int8 tiles of 1-3 rows with leftover
    # weight rows, the M x 1 tiles, a K tail (1003 slots of 4), a remainder block, 16
    # rows (the most the kernel takes), a transposed input (reshaped through a
    # copy), and prompts OpenBLAS takes after widening.
    shapes = [
        (1, 896, 4864, False, "c"),
        (1, 896, 128, True, "c"),
        (2, 896, 1001, True, "c"),
        (5, 4864, 896, False, "c"),
        (8, 4012, 517, True, "c"),
        (13, 576, 203, False, "c"),
        (16, 64, 1031, True, "c"),
        (3, 64, 40, False, "f"),
        (17, 576, 576, False, "c"),
        (40, 896, 1500, True, "c"),
    ]
    result = json.loads(run_fast(PRODUCTS, json.dumps(shapes)))
    assert result["available"]
    for shape, product in zip(shapes, result["products"], strict=True):
        rows, _, outer, _, _ = shape
        assert product["counted"] == 1, (shape, product)
        assert product["shape"][-2:] == [rows, outer]
        assert product["err"] < 1e-5, (shape, product)
        if rows <= 16:  # the kernel's rows do not depend on the others
            assert product["row0_same"], (shape, product)


@NEEDS_FAST_PATH
def test_int8_copy_computes_the_dequantized_model_and_leaves_the_original():
    result = json.loads(run_fast(MODEL))
    assert result["False"]["head"] == "Int8Linear"  # its own output layer
    assert result["True"]["head"] == "Int8Embedding"  # tied to the embedding
    for copy in result.values():
        assert copy["layers"] == copy["linears"] > 0
        assert max(copy["gaps"]) < 1e-4, copy
        assert copy["original_same"] and copy["shares_embedding"]


@NEEDS_FAST_PATH
def test_an_int8_draft_leaves_greedy_output_as_it_was(tiny_float_model_dir):
    result = json.loads(run_fast(ENGINE, str(tiny_float_model_dir)))
    assert result["drafted"] == result["plain"] and result["plain"]
    assert result["int8_calls"] > 0  # the draft ran on the kernel's int8 products
    assert result["accepted"] > 0.5  # its own int8 copy mostly agrees with it


def test_not_available_without_the_kernel():
    code = "from engine.int8_linear import available; print(available())"
    assert run_fast(code, env={"LD_PRELOAD": ""}).strip() == "False"


def test_drafting_converts_only_where_the_kernel_runs(
    monkeypatch, tiny_float_model_dir
):
    from mlx_lm import load

    model, tokenizer = load(str(tiny_float_model_dir))
    monkeypatch.setattr(int8_linear, "available", lambda: False)
    assert LoadedModel(model, tokenizer, {}, None).drafting() is model
    monkeypatch.setattr(int8_linear, "available", lambda: True)
    loaded = LoadedModel(model, tokenizer, {}, None)
    drafting = loaded.drafting()
    assert drafting is not model and loaded.drafting() is drafting  # built once
    layers = drafting.named_modules()
    kinds = {type(m) for name, m in layers if name.startswith("model.layers")}
    assert Int8Linear in kinds and nn.Linear not in kinds
    assert not any(isinstance(m, Int8Linear) for _, m in model.named_modules())


def test_quantized_layers_are_left_and_nothing_to_convert_is_none(tiny_model_dir):
    from mlx_lm import load

    model, _ = load(str(tiny_model_dir))  # its layers are quantized
    assert int8_linear.int8_copy(model) is None
    assert int8_linear.int8_copy(nn.Linear(4, 4)) is None


def test_a_wrapped_model_is_left_to_its_wrapper(tiny_float_model_dir):
    from mlx_lm import load

    from engine.lockstep import LockstepModel, StepClock

    model, _ = load(str(tiny_float_model_dir))
    wrapper = LockstepModel(model, None, StepClock(), lambda e: e)
    assert int8_linear.int8_copy(wrapper) is None


def test_input_sizes_not_divisible_by_4_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        Int8Linear(mx.zeros((4, 6)))
