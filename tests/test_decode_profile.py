"""`silica bench --profile`: a decode step split by where its time goes."""

from __future__ import annotations

import os

from engine import fast_blas
from engine.decode_profile import (
    DecodeProfile,
    copy_bandwidth,
    profile_decode,
    render_profile,
)


def test_profile_of_a_real_decode(model):
    profile = profile_decode(model, [1, 5, 9, 42, 7], steps=4)
    assert profile.step_s > 0
    assert profile.weights_bytes == round(model.info.memory_gb * 1e9)
    if os.environ.get(fast_blas.MARKER) == "on":  # the kernel counts its own time
        assert profile.kernel_s is not None and profile.openblas_s is not None
        assert 0 <= profile.kernel_s + profile.openblas_s <= profile.step_s
    text = render_profile(profile, "tiny")
    assert "bandwidth floor" in text and "| decode step |" in text


def test_copy_bandwidth_is_plausible():
    assert 0.5 < copy_bandwidth(repeats=2) < 2000


def test_render_splits_and_compares_with_the_floor():
    profile = DecodeProfile(0.040, 0.020, 0.005, 500_000_000, 25.0)
    text = render_profile(profile, "m")
    assert "floor 50.0 tok/s (50% of it reached)" in text
    assert "|   everything else (MLX ops, Python) | 15.0 | 38% |" in text
    assert "| bandwidth floor (weights / copy bandwidth) | 20.0 | 50% |" in text
