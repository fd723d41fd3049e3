"""MLX's CPU JIT, compiled for this machine's vector unit.

On CPU, ``mx.compile`` fuses elementwise graphs (SiLU, the norms' fallbacks, Silica's
softmax in engine/exp_kernels.py) into C++ that MLX compiles at run time by calling
``g++ -O3`` from PATH, with no ``-m`` flags: the Linux wheel targets baseline x86-64.
There every ``fma`` in MLX's exp is a call into libm, the selects stay branches, and the
loop runs one element at a time: ~15 ns an exp and ~19 ns a SiLU, against ~0.4 ns a
multiply. A ``g++`` front put first on PATH adds ``FLAGS``; the same kernels then
vectorize (~1 ns an element).

The results are bit for bit the same: a fused multiply-add rounds once whether libm or
the instruction does it, ``-ffp-contract=off`` keeps every ``a * b + c`` unfused as
before, and ``-fno-trapping-math`` changes no value in the default rounding mode; it
only lets GCC turn the selects into blends.

MLX keeps compiled kernels in ``$TMPDIR/mlx/<version>/cpu``, named by graph and not by
flags, so Silica's processes get a TMPDIR of their own: a kernel built by another MLX
program is never picked up slow, and ours never leak into "stock" measurements.

Standard library only: engine/fast_blas.py calls this before MLX is imported.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "-march=native",
    "-ffp-contract=off",
    "-fno-trapping-math",
    "-finline-limit=2000",
)
MARKER = "SILICA_JIT"  # the front's folder, in a process whose MLX JIT goes through it
NEEDED_CPU_FLAGS = {"avx2", "fma"}


def supported() -> bool:
    """True on Linux x86-64 with AVX2 and FMA: where the flags were checked."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) >= NEEDED_CPU_FLAGS
    return False


def write_front(cache_dir: Path) -> Path | None:
    """The folder holding the ``g++`` front (written once), or None without g++."""
    folder = cache_dir / "jit"
    search = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != folder
    )
    compiler = shutil.which("g++", path=search)
    if compiler is None:
        return None
    script = f'#!/bin/sh\nexec "{compiler}" "$@" {" ".join(FLAGS)}\n'
    front, staging = folder / "g++", folder / f".g++.{os.getpid()}"
    try:
        if front.is_file() and front.read_text() == script:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        staging.write_text(script)
        staging.chmod(0o755)
        os.replace(staging, front)  # atomic: MLX never runs a half-written front
    except OSError:
        return None
    finally:
        staging.unlink(missing_ok=True)
    return folder


def private_tmp() -> Path | None:
    """This user's own temporary folder for Silica processes, or None if unsafe."""
    base = Path(tempfile.gettempdir())
    name = f"silica-{os.getuid()}"
    folder = base if base.name == name else base / name
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    # MLX dlopens the kernels it finds there: refuse a folder someone else could write.
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & 0o022
    ):
        return None
    return folder


def env(cache_dir: Path) -> dict[str, str]:
    """Environment additions that route MLX's JIT through the front; {} if not here."""
    if os.environ.get(MARKER):
        return {}
    path = os.environ.get("PATH", "")
    if not supported() or any(c.isspace() for c in path):
        return {}  # `env $(... --env)` in the Makefile splits on spaces
    front, tmp = write_front(cache_dir), private_tmp()
    if front is None or tmp is None or any(c.isspace() for c in str(tmp)):
        return {}
    return {
        "PATH": f"{front}{os.pathsep}{path}",
        "TMPDIR": str(tmp),
        MARKER: str(front),
    }


def without(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with the front and the private TMPDIR taken back out."""
    front = environ.get(MARKER)
    if not front:
        return dict(environ)
    out = {k: v for k, v in environ.items() if k != MARKER}
    parts = out.get("PATH", "").split(os.pathsep)
    out["PATH"] = os.pathsep.join(p for p in parts if p != front)
    tmp = Path(out.get("TMPDIR", ""))
    if tmp.name == f"silica-{os.getuid()}":
        out["TMPDIR"] = str(tmp.parent)
    return out


def active() -> bool:
    """True when this process's MLX JIT compiles through the front."""
    return bool(os.environ.get(MARKER))
