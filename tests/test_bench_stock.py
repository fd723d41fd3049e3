"""Stock mlx-lm in a child process: no preload, weights as stored."""

from __future__ import annotations

import os

from engine import fast_blas, jit_front
from engine.bench import BenchRow
from engine.bench_stock import render_stock, stock_env, stock_rows


def test_child_environment_drops_the_fast_path(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/x/skinny.so:/x/libopenblas.so.0")
    monkeypatch.setenv("PATH", "/cache/silica/jit:/usr/bin:/bin")
    monkeypatch.setenv("TMPDIR", f"/tmp/silica-{os.getuid()}")
    monkeypatch.setenv(jit_front.MARKER, "/cache/silica/jit")
    monkeypatch.setenv(fast_blas.TUNABLES, f"glibc.a=1:{fast_blas.HUGE_PAGES}")
    env = stock_env()
    assert "LD_PRELOAD" not in env
    assert env[fast_blas.TUNABLES] == "glibc.a=1"  # the user's own tunables stay
    assert env[fast_blas.MARKER] == "off"
    # MLX's JIT back to plain g++, and its kernel cache back to the shared one
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["TMPDIR"] == "/tmp"
    assert jit_front.MARKER not in env


def test_stock_rows_measure_the_stored_model(tiny_model_dir):
    rows = stock_rows(str(tiny_model_dir), ["summarize", "code"], 4, 1)
    assert set(rows) == {"summarize", "code"}
    for row in rows.values():
        assert row["prompt_tps"] > 0 and row["decode_tps"] >= 0
        assert 1 <= row["generated"] <= 4


def test_render_stock_gives_silica_plain_ratios():
    row = BenchRow("summarize", "silica plain", 500.0, 30.0, 0.2, 0.5, 64)
    lookup = BenchRow("summarize", "silica lookup", 400.0, 60.0, 0.2, 0.5, 64)
    stock = {"summarize": {"prompt_tps": 20.0, "decode_tps": 10.0, "generated": 64}}
    table = render_stock([row, lookup], stock)
    assert "| summarize | 20.0 | 10.0 | 500.0 | 30.0 | 25.00x | 3.00x |" in table
    assert "400.0" not in table  # only the plain row is compared


def test_bad_model_dir_names_the_failure(tmp_path):
    try:
        stock_rows(str(tmp_path / "missing"), ["code"], 4, 1)
    except RuntimeError as e:
        assert "stock mlx-lm run failed" in str(e) and "missing" in str(e)
    else:
        raise AssertionError("a missing model directory must fail")
