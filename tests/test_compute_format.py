"""Backend-aware compute formats: measure once, widen to float32 when it pays."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from convert import load_checked
from engine import Engine, compute_format
from engine.compute_format import choose, stored_format, widen

SPEEDS = {"float32": 1.0, "bfloat16": 3.0, "8-bit": 4.0, "4-bit": 2.0}
GB = 10**9


@pytest.mark.parametrize(
    ("requested", "stored", "widen_gb", "room_gb", "want"),
    [
        ("auto", "4-bit", 1, 8, "float32"),  # faster and fits
        ("auto", "4-bit/8-bit", 1, 8, "float32"),  # mixed: the slowest part counts
        ("auto", "4-bit", 9, 8, "4-bit"),  # faster but does not fit
        ("auto", "float32", 1, 8, "float32"),
        ("stored", "bfloat16", 1, 8, "bfloat16"),
        ("float32", "4-bit", 1, 8, "float32"),
    ],
)
def test_choose(requested, stored, widen_gb, room_gb, want):
    choice = choose(requested, stored, SPEEDS, widen_gb * GB, room_gb * GB)
    assert (choice.compute, choice.stored) == (want, stored)
    assert choice.reason


def test_choose_keeps_a_format_that_is_faster_than_float32():
    metal_like = {"float32": 4.0, "4-bit": 1.0}
    choice = choose("auto", "4-bit", metal_like, GB, 8 * GB)
    assert choice.compute == "4-bit" and "at least as fast" in choice.reason
    unmeasured = choose("auto", "3-bit", SPEEDS, GB, 8 * GB)
    assert unmeasured.compute == "3-bit" and "no speed measured" in unmeasured.reason


def test_forcing_float32_that_does_not_fit_says_why():
    with pytest.raises(ValueError, match="does not fit: float32 would need 9.0 GB"):
        choose("float32", "4-bit", SPEEDS, 9 * GB, 8 * GB)


def test_widen_gives_float32_weights_and_the_same_answers(tiny_model_dir):
    model, _, _ = load_checked(tiny_model_dir)
    assert stored_format(model) == "4-bit/8-bit"
    tokens = mx.array([[1, 5, 9, 42, 7]])
    before = model(tokens)
    widen(model)
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    assert dtypes == {mx.float32}
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    assert stored_format(model) == "float32"
    after = model(tokens)
    assert mx.allclose(before, after, atol=1e-3).item()


def test_speeds_are_measured_once_per_machine(tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(
        compute_format, "_measure", lambda: measured.append(1) or {"float32": 1.0}
    )
    (tmp_path / "formats-1.json").write_text("{not json")  # a torn earlier write
    first = compute_format.measured_speeds(tmp_path)
    again = compute_format.measured_speeds(tmp_path)
    assert first == again == {"float32": 1.0} and measured == [1]
    assert json.loads((tmp_path / "formats-1.json").read_text())


def test_real_measurement_covers_every_format(tmp_path):
    speeds = compute_format.measured_speeds(tmp_path)
    assert set(speeds) == set(compute_format.MEASURED)
    assert all(0 < s < 10 for s in speeds.values())


def test_engine_reports_and_honours_the_format(tiny_model_dir):
    with Engine(safety=None, compute_format="float32") as engine:
        wide = engine.load(str(tiny_model_dir), name="wide").info
        assert (wide.stored_format, wide.compute_format) == ("4-bit/8-bit", "float32")
    with Engine(safety=None, compute_format="stored") as engine:
        kept = engine.load(str(tiny_model_dir), name="kept").info
        assert kept.compute_format == "4-bit/8-bit"
        assert kept.format_reason == "as requested"
    assert wide.memory_gb > 3 * kept.memory_gb  # what the memory budget is charged
    with pytest.raises(ValueError, match="compute_format must be one of auto"):
        Engine(compute_format="int3")
