"""bfloat16 weights on the skinny-GEMM kernel: products, model copies, drafting."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.nn as nn
import pytest

from engine import packed_bf16
from engine.decode import LoadedModel
from engine.packed_bf16 import PackedLinear
from tests.test_fast_blas import NEEDS_FAST_PATH, run_fast

# Runs in a child process on the fast path: each product of PackedLinear against the
# float32 product of the same weights rounded to bfloat16 (the kernel for up to 16
# rows, OpenBLAS past that), and whether the kernel counted it as a bfloat16 product.
PRODUCTS = r"""
import ctypes, json, sys
import mlx.core as mx, numpy as np
from engine.packed_bf16 import PackedLinear, available
calls = lambda: ctypes.c_long.in_dll(ctypes.CDLL(None), "silica_bf16_calls").value
rng = np.random.default_rng(0)
out = []
for m, k, n, bias, layout in json.loads(sys.argv[1]):
    x = rng.standard_normal((m, k), dtype=np.float32)
    # "c": rows in order; "f": stored column by column, as a transposed view is
    xs = mx.array(x)[None] if layout == "c" else mx.array(np.ascontiguousarray(x.T)).T
    w = mx.array(rng.standard_normal((n, k), dtype=np.float32))
    b = mx.array(rng.standard_normal(n, dtype=np.float32)) if bias else None
    rounded = w.astype(mx.bfloat16).astype(mx.float32)
    xc = mx.array(x)[None]  # rows in order, so the reference runs on the kernel too
    want = mx.addmm(b, xc, rounded.T) if bias else xc @ rounded.T
    before = calls()
    got = PackedLinear(w, b)(xs)
    mx.eval(got, want)
    g, e = np.array(got).reshape(m, n), np.array(want).reshape(m, n)
    out.append({"counted": calls() - before, "shape": list(got.shape),
                "same": bool(np.array_equal(g, e)),
                "err": float(np.abs(g - e).max() / np.abs(e).max())})
print(json.dumps({"available": available(), "products": out}))
"""

# A packed copy of a model against the model with its layers' weights rounded to
# bfloat16, for a few tokens (the kernel) and a prompt (OpenBLAS); and the original
# model left as it was, sharing its other arrays with the copy.
MODEL = r"""
import json, sys
import mlx.core as mx, mlx.nn as nn, numpy as np
from mlx_lm import load
from engine.packed_bf16 import PackedLinear, packed_copy
model, _ = load(sys.argv[1])
rounded, _ = load(sys.argv[1])
fresh, _ = load(sys.argv[1])
for name, layer in rounded.named_modules():
    if name.startswith("model.layers.") and type(layer) is nn.Linear:
        layer.weight = layer.weight.astype(mx.bfloat16).astype(mx.float32)
copy = packed_copy(model)
few = mx.array([[1, 5, 9, 200, 3, 17]])
many = mx.array([list(range(3, 43))])
same = lambda a, b: bool(np.array_equal(np.array(a), np.array(b)))
gap = lambda a, b: float(np.abs(np.array(a) - np.array(b)).max())
print(json.dumps({
    "packed": sum(isinstance(m, PackedLinear) for _, m in copy.named_modules()),
    "linears": sum(type(m) is nn.Linear for n, m in model.named_modules()
                   if n.startswith("model.layers.")),
    "few_same": same(copy(few), rounded(few)),
    "many_gap": gap(copy(many), rounded(many)),
    "original_same": same(model(few), fresh(few)),
    "shares_embedding":
        copy.model.embed_tokens.weight is model.model.embed_tokens.weight,
}))
"""


@pytest.fixture(scope="module")
def float_model_dir(tmp_path_factory) -> Path:
    """The tiny random llama with every weight float32 (no quantized layers)."""
    from convert import ConvertOptions, convert_model
    from tests.tiny_gguf import write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-float")
    write_tiny_gguf(root / "tiny.gguf")
    options = ConvertOptions(dequantize=True, dtype="float32")
    return convert_model(
        str(root / "tiny.gguf"), root / "mlx", options, progress=False
    ).path


@NEEDS_FAST_PATH
def test_products_equal_float32_products_of_the_rounded_weights():
    # (rows, inner, outer, bias, layout): one row, the M x 1 tiles, a K tail (1003
    # pairs), a remainder block, 16 rows (the most the kernel takes), a transposed
    # input (reshaped through a copy), and prompts OpenBLAS takes after widening.
    shapes = [
        (1, 896, 4864, False, "c"),
        (1, 896, 128, True, "c"),
        (5, 4864, 896, False, "c"),
        (8, 2006, 517, True, "c"),
        (13, 576, 203, False, "c"),
        (16, 64, 1031, True, "c"),
        (3, 64, 40, False, "f"),
        (17, 576, 576, False, "c"),
        (40, 896, 1500, True, "c"),
    ]
    result = json.loads(run_fast(PRODUCTS, json.dumps(shapes)))
    assert result["available"]
    for shape, product in zip(shapes, result["products"], strict=True):
        rows, _, outer, _, layout = shape
        assert product["counted"] == 1, (shape, product)
        assert product["shape"][-2:] == [rows, outer]
        assert product["err"] < 1e-5, (shape, product)
        if rows <= 16:  # the kernel sums bfloat16 weights as it sums float32 ones
            assert product["same"], (shape, product)


@NEEDS_FAST_PATH
def test_packed_copy_computes_the_rounded_model_and_leaves_the_original(
    float_model_dir,
):
    result = json.loads(run_fast(MODEL, str(float_model_dir)))
    assert result["packed"] == result["linears"] > 0
    assert result["few_same"]
    assert result["many_gap"] < 1e-3
    assert result["original_same"] and result["shares_embedding"]


def test_not_available_without_the_kernel():
    code = "from engine.packed_bf16 import available; print(available())"
    assert run_fast(code, env={"LD_PRELOAD": ""}).strip() == "False"


def test_drafting_packs_only_where_the_kernel_runs(monkeypatch, float_model_dir):
    from mlx_lm import load

    model, tokenizer = load(str(float_model_dir))
    monkeypatch.setattr(packed_bf16, "available", lambda: False)
    assert LoadedModel(model, tokenizer, {}, None).drafting() is model
    monkeypatch.setattr(packed_bf16, "available", lambda: True)
    loaded = LoadedModel(model, tokenizer, {}, None)
    drafting = loaded.drafting()
    assert drafting is not model and loaded.drafting() is drafting  # built once
    layers = drafting.named_modules()
    kinds = {type(m) for name, m in layers if name.startswith("model.layers")}
    assert PackedLinear in kinds and nn.Linear not in kinds
    assert not any(isinstance(m, PackedLinear) for _, m in model.named_modules())


def test_quantized_layers_are_left_and_nothing_to_pack_is_none(tiny_model_dir):
    from mlx_lm import load

    model, _ = load(str(tiny_model_dir))  # its layers are quantized
    assert packed_bf16.packed_copy(model) is None
    assert packed_bf16.packed_copy(nn.Linear(4, 4)) is None


def test_odd_input_sizes_are_refused():
    import mlx.core as mx

    try:
        PackedLinear(mx.zeros((4, 7)))
    except ValueError as e:
        assert "even input size" in str(e)
    else:
        raise AssertionError("an odd input size was packed")
