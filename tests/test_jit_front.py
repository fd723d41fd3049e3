"""The g++ front for MLX's CPU JIT: where it applies, what it writes, same results."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from engine import jit_front

# `make install` puts g++ in place and CI runs on x86-64 with AVX2 and FMA: under CI
# this runs (and fails) always.
NEEDS_FRONT = pytest.mark.skipif(
    not os.environ.get("CI") and not (jit_front.supported() and shutil.which("g++")),
    reason="Linux x86-64 with AVX2, FMA and g++ only",
)

# Compiled elementwise graphs with MLX's exp in them, over values that reach every
# branch of MLX's exp (overflow, underflow, NaN, infinities, subnormals).
KERNELS = r"""
import sys, numpy as np, mlx.core as mx
mx.random.seed(0)
special = [np.nan, np.inf, -np.inf, 88.0, -88.0, 88.5, -88.5, 0.0, -0.0, 1e-40, -1e-40]
x = mx.concatenate([mx.random.normal((1 << 16,)) * s for s in (1, 10, 100)]
                   + [mx.array(special, dtype=mx.float32)])
silu = mx.compile(lambda a: a * mx.sigmoid(a))
shifted = mx.compile(lambda a, b: mx.exp(a - b))
out = [silu(x), shifted(x, mx.array(3.0)), mx.compile(lambda a: mx.exp(a) + 1)(x)]
np.save(sys.argv[1], np.stack([np.array(o) for o in out]))
"""


def fake_compiler(folder: Path) -> Path:
    """A ``g++`` that prints its arguments, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    gxx = folder / "g++"
    gxx.write_text('#!/bin/sh\necho "$@"\n')
    gxx.chmod(0o755)
    return gxx


def test_front_passes_everything_on_with_the_flags_last(tmp_path, monkeypatch):
    real = fake_compiler(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(real.parent))
    front = jit_front.write_front(tmp_path / "cache")
    assert front == tmp_path / "cache" / "jit"
    done = subprocess.run(
        [str(front / "g++"), "-O3", "k.cpp", "-o", "k.so"],
        capture_output=True,
        text=True,
    )
    assert done.stdout.split() == ["-O3", "k.cpp", "-o", "k.so", *jit_front.FLAGS]
    # With the front itself first on PATH, it still finds the real compiler, and an
    # unchanged front is not rewritten.
    monkeypatch.setenv("PATH", f"{front}:{real.parent}")
    written = (front / "g++").stat().st_mtime_ns
    assert jit_front.write_front(tmp_path / "cache") == front
    assert (front / "g++").stat().st_mtime_ns == written
    assert str(real) in (front / "g++").read_text()


def test_no_gxx_means_no_front(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(jit_front.MARKER, raising=False)
    monkeypatch.setattr(jit_front, "supported", lambda: True)
    assert jit_front.write_front(tmp_path / "cache") is None
    assert jit_front.env(tmp_path / "cache") == {}


def test_private_tmp_is_this_users_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    own = jit_front.private_tmp()
    assert own == tmp_path / f"silica-{os.getuid()}"
    assert own.stat().st_mode & 0o777 == 0o700
    monkeypatch.setattr(tempfile, "tempdir", str(own))  # a Silica child: no nesting
    assert jit_front.private_tmp() == own
    own.chmod(0o777)  # MLX loads kernels from here: others must not write to it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert jit_front.private_tmp() is None
    own.chmod(0o700)
    own.rmdir()
    (tmp_path / "elsewhere").mkdir()
    own.symlink_to(tmp_path / "elsewhere")
    assert jit_front.private_tmp() is None


def test_env_and_without_round_trip(tmp_path, monkeypatch):
    real = fake_compiler(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{real.parent}:/usr/bin")
    monkeypatch.delenv(jit_front.MARKER, raising=False)
    monkeypatch.setattr(jit_front, "supported", lambda: True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    added = jit_front.env(tmp_path / "cache")
    assert added["PATH"] == f"{tmp_path / 'cache' / 'jit'}:{real.parent}:/usr/bin"
    assert added["TMPDIR"] == str(tmp_path / f"silica-{os.getuid()}")
    assert added[jit_front.MARKER] == str(tmp_path / "cache" / "jit")
    child = {**os.environ, **added}
    back = jit_front.without(child)
    assert back["PATH"] == os.environ["PATH"]
    assert back["TMPDIR"] == str(tmp_path)
    assert jit_front.MARKER not in back
    mine = {**child, "TMPDIR": "/scratch"}  # a TMPDIR the user set later stays
    assert jit_front.without(mine)["TMPDIR"] == "/scratch"
    monkeypatch.setenv(jit_front.MARKER, added[jit_front.MARKER])
    assert jit_front.env(tmp_path / "cache") == {}  # already on the front
    monkeypatch.delenv(jit_front.MARKER)
    monkeypatch.setenv("PATH", f"{real.parent}:/opt/my tools/bin")
    assert jit_front.env(tmp_path / "cache") == {}  # `env $(...)` would split it


def test_supported_only_on_linux_x86(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not jit_front.supported()


@NEEDS_FRONT
def test_front_kernels_are_vectorized_and_bit_identical(tmp_path):
    front = jit_front.write_front(tmp_path / "cache")
    assert front is not None
    results = {}
    for name, extra in {
        "stock": {},
        "front": {
            "PATH": f"{front}:{os.environ['PATH']}",
            jit_front.MARKER: str(front),
        },
    }.items():
        tmp = tmp_path / name
        tmp.mkdir()
        env = {**jit_front.without(dict(os.environ)), "TMPDIR": str(tmp), **extra}
        done = subprocess.run(
            [sys.executable, "-c", KERNELS, str(tmp / "out.npy")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        kernels = list(tmp.glob("mlx/*/cpu/*.so"))
        assert len(kernels) >= 3
        # The stock build calls libm's fmaf per multiply-add; the front's inlines them.
        results[name] = (
            np.load(tmp / "out.npy").view(np.uint32),
            [b"fmaf" in k.read_bytes() for k in kernels],
        )
    assert np.array_equal(results["stock"][0], results["front"][0])
    assert all(results["stock"][1]) and not any(results["front"][1])
