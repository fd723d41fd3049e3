"""The CPU fast path: the skinny-GEMM kernel, the preload plan and the re-exec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import fast_blas, jit_front

ROOT = Path(__file__).resolve().parents[1]
# `make install` puts OpenBLAS and gcc in place: under CI these run (and fail) always.
NEEDS_FAST_PATH = pytest.mark.skipif(
    not os.environ.get("CI")
    and not (fast_blas.bundles_reference_blas() and fast_blas.find_openblas()),
    reason="Linux MLX CPU wheel with a system OpenBLAS only",
)

# Runs in a child process on the fast path: MLX matmuls of many shapes against numpy,
# whether the kernel took them, and whether a row's result depends on the other rows.
MATMULS = r"""
import ctypes, json, sys
import mlx.core as mx, numpy as np
calls = lambda: ctypes.c_long.in_dll(ctypes.CDLL(None), "silica_skinny_calls").value
rng = np.random.default_rng(0)
out = []
for m, k, n, bias, kind in json.loads(sys.argv[1]):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    before = calls()
    # "t": B transposed (a weight, keys); "n": B as stored (an attention's values)
    wt = mx.array(w).T if kind == "t" else mx.array(np.ascontiguousarray(w.T))
    bs = mx.array(b)
    product = lambda xs: mx.addmm(bs, xs, wt) if bias else xs @ wt
    y = np.array(product(mx.array(x)))
    took = calls() > before
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0)
    row0 = np.array(product(mx.array(x[:1])))[0]
    out.append({"took": took, "err": float(np.abs(y - want).max() / np.abs(want).max()),
                "row0_same": bool(np.array_equal(row0, y[0]))})
print(json.dumps(out))
"""


def run_fast(code: str, *args: str, env: dict | None = None) -> str:
    plan = fast_blas.plan(fast_blas.cache_dir())
    child = {**os.environ, **plan.env(), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=child,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@NEEDS_FAST_PATH
def test_plan_preloads_kernel_then_openblas():
    plan = fast_blas.plan(fast_blas.cache_dir())
    assert len(plan.preload) == 2, plan.reason
    assert "skinny_gemm" in plan.preload[0] and "openblas" in plan.preload[1]
    env = plan.env()
    assert env["LD_PRELOAD"].split(":")[:2] == list(plan.preload)
    assert env[fast_blas.MARKER] == "on"


@NEEDS_FAST_PATH
def test_skinny_products_match_numpy_and_do_not_depend_on_other_rows():
    # (rows, inner, outer, bias, B transposed or not): tails in every dimension, the
    # largest row count the kernel takes, every tile plan (one row; wide tiles; one
    # weight row against up to 8 short rows, with a remainder block), attention-sized
    # products (keys, values), and shapes it must hand to OpenBLAS (17 rows; large
    # values).
    shapes = [
        (1, 576, 1536, False, "t"),
        (3, 1003, 517, True, "t"),
        (8, 1536, 576, False, "t"),
        (5, 1100, 64, False, "t"),
        (8, 1003, 517, True, "t"),
        (13, 576, 203, False, "t"),
        (16, 64, 1031, True, "t"),
        (4, 32, 32, False, "t"),
        (3, 64, 203, False, "t"),
        (3, 203, 64, False, "n"),
        (6, 77, 131, True, "n"),
        (17, 576, 576, False, "t"),
        (2, 1024, 1024, False, "n"),
    ]
    results = json.loads(run_fast(MATMULS, json.dumps(shapes)))
    took = [r["took"] for r in results]
    assert took == [True] * 11 + [False] * 2
    for shape, result in zip(shapes, results, strict=True):
        assert result["err"] < 1e-5, (shape, result)
    # The kernel's rows are bit-identical whatever M is; OpenBLAS's need not be.
    assert all(r["row0_same"] for r in results[:11])


def test_kernel_is_built_once_and_reused(tmp_path):
    first, why = fast_blas.build_shim(tmp_path)
    if first is None and not os.environ.get("CI"):
        pytest.skip(f"no C toolchain here: {why}")
    assert first is not None, why
    stamp = first.stat().st_mtime_ns
    again, _ = fast_blas.build_shim(tmp_path)
    assert again == first and first.stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p != first]  # no staging left


def test_no_compiler_falls_back_to_openblas_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    shim, why = fast_blas.build_shim(tmp_path)
    assert shim is None and "no-such-cc" in why
    assert not list((tmp_path / "native").iterdir())  # nothing half-written
    monkeypatch.setattr(fast_blas, "bundles_reference_blas", lambda: True)
    monkeypatch.setattr(
        fast_blas, "find_openblas", lambda: Path("/lib/libopenblas.so.0")
    )
    plan = fast_blas.plan(tmp_path)
    assert plan.preload == ("/lib/libopenblas.so.0",)
    assert plan.reason.startswith("OpenBLAS only")


def test_unwritable_cache_falls_back_instead_of_failing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    shim, why = fast_blas.build_shim(blocker)  # native/ cannot be made under a file
    assert shim is None and "cannot write" in why


def test_no_openblas_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(fast_blas.OPENBLAS_ENV, str(tmp_path / "missing.so"))
    monkeypatch.setattr(fast_blas, "bundles_reference_blas", lambda: True)
    monkeypatch.setattr(jit_front, "env", lambda cache_dir: {})
    plan = fast_blas.plan(tmp_path)
    assert plan.preload == () and "apt install libopenblas0-pthread" in plan.reason
    assert plan.env() == {fast_blas.MARKER: "none"}


def test_the_plan_carries_the_jit_front_and_huge_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(fast_blas, "bundles_reference_blas", lambda: True)
    monkeypatch.setattr(
        fast_blas, "find_openblas", lambda: Path("/lib/libopenblas.so.0")
    )
    front = {"PATH": "/front:/usr/bin", jit_front.MARKER: "/front"}
    monkeypatch.setattr(jit_front, "env", lambda cache_dir: front)
    monkeypatch.delenv(fast_blas.TUNABLES, raising=False)
    plan = fast_blas.plan(tmp_path)
    assert plan.reason.endswith("native-ISA MLX JIT")
    env = plan.env()
    assert env["PATH"] == "/front:/usr/bin" and env[jit_front.MARKER] == "/front"
    assert env[fast_blas.TUNABLES] == fast_blas.HUGE_PAGES
    monkeypatch.setenv(fast_blas.TUNABLES, "glibc.a=1")  # the user's own are kept
    tunables = fast_blas.plan(tmp_path).env()[fast_blas.TUNABLES]
    assert tunables == f"glibc.a=1:{fast_blas.HUGE_PAGES}"


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE = r"""
import mlx.core as mx, re
w = mx.ones((64 << 20,))  # 256 MB, as a model's weights are allocated
mx.eval(w)
rollup = open("/proc/self/smaps_rollup").read()
print(int(re.search(r"AnonHugePages:\s+(\d+) kB", rollup).group(1)) // 1024)
"""


@NEEDS_FAST_PATH
@pytest.mark.skipif(
    THP.is_file() and "[never]" in THP.read_text(), reason="huge pages off here"
)
def test_weights_land_on_huge_pages_on_the_fast_path():
    assert int(run_fast(HUGE).strip()) >= 128  # MB of the 256 on 2 MB pages


def test_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv(fast_blas.MARKER, "off")
    assert fast_blas.plan(tmp_path).preload == ()


@NEEDS_FAST_PATH
def test_silica_reexecs_onto_the_fast_path_and_says_so():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.pop(fast_blas.MARKER, None)
    silica = Path(sys.executable).with_name("silica")
    done = subprocess.run(
        [str(silica), "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "skinny GEMM kernel + OpenBLAS" in done.stdout
    env[fast_blas.MARKER] = "off"
    done = subprocess.run(
        [str(silica), "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "reference BLAS (slow)" in done.stdout
