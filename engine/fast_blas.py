"""The Linux CPU fast path: run MLX's matmuls on OpenBLAS and a skinny-GEMM kernel.

The ``mlx[cpu]`` wheel for Linux links a bundled reference BLAS, which multiplies
float32 matrices many times slower than OpenBLAS (DESIGN.md). MLX resolves
``cblas_sgemm`` when the process starts, so the only way in is ``LD_PRELOAD``: the
``silica`` command re-executes itself once with OpenBLAS preloaded, and ahead of it
``engine/native/skinny_gemm.c``, compiled here once per machine, which takes the
products with few rows (decode steps, speculative verifies, small batches) at memory
speed and passes every other call on to OpenBLAS. Either piece is optional: without a C
compiler OpenBLAS alone is preloaded; without OpenBLAS nothing changes. The same
environment routes MLX's elementwise JIT through a ``g++`` front that compiles for this
CPU's vector unit (engine/jit_front.py).

Standard library only: this runs before anything heavy is imported.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path

from engine import jit_front

SOURCE = Path(__file__).with_name("native") / "skinny_gemm.c"
MARKER = "SILICA_FAST_BLAS"  # set in the re-executed process; "off" disables the path
OPENBLAS_ENV = "SILICA_OPENBLAS"  # a libopenblas path that overrides the search
SHIM_SYMBOL = "silica_skinny_calls"
# Products with up to this many rows go to the kernel (skinny_gemm.c: SKINNY_MAX_M),
# which sums each row the same way whatever the count.
KERNEL_MAX_ROWS = 16
TUNABLES = "GLIBC_TUNABLES"
HUGE_PAGES = "glibc.malloc.hugetlb=1"  # madvise(MADV_HUGEPAGE) on malloc's mappings
OPENBLAS_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
)


@dataclass(frozen=True)
class FastBlas:
    """What to preload and why; empty ``preload`` means run as is."""

    preload: tuple[str, ...]
    reason: str
    jit: dict[str, str] = field(default_factory=dict)  # jit_front.env(), maybe {}

    def env(self) -> dict[str, str]:
        """Environment additions for a process that should run on the fast path."""
        if not self.preload:
            return {**self.jit, MARKER: "none"}
        preload = ":".join([*self.preload, os.environ.get("LD_PRELOAD", "")]).strip(":")
        # OpenMP's default wait policy (spin briefly, then sleep) is kept on purpose:
        # PASSIVE made a decode step ~20% slower (a futex wake per product), ACTIVE
        # spins forever and starves OpenBLAS and the server threads (GOMP_SPINCOUNT
        # 20000 or 100000 measured no better than the default).
        return {**self.jit, **huge_pages(), "LD_PRELOAD": preload, MARKER: "on"}


def huge_pages() -> dict[str, str]:
    """glibc's malloc asks for transparent huge pages (glibc 2.35+, else ignored).

    A decode step streams every weight once, 4 KB page after 4 KB page: a TLB miss
    each (a two-level walk under a hypervisor), and the hardware prefetchers stop at
    every page boundary. On 2 MB pages a SmolLM2 step ran 4-8% faster here (five
    alternating pairs of runs). Tunables are read when a process starts, so this
    takes effect in the re-executed process.
    """
    current = os.environ.get(TUNABLES, "")
    if sys.platform != "linux" or HUGE_PAGES in current:
        return {}
    return {TUNABLES: f"{current}:{HUGE_PAGES}".strip(":")}


def bundles_reference_blas() -> bool:
    """True when MLX is the Linux CPU wheel with its bundled reference BLAS."""
    spec = find_spec("mlx")
    if sys.platform != "linux" or spec is None or not spec.submodule_search_locations:
        return False
    site = Path(next(iter(spec.submodule_search_locations))).parent
    return any(site.glob("mlx_cpu.libs/libblas-*.so*"))


def find_openblas() -> Path | None:
    """The system's OpenBLAS (``$SILICA_OPENBLAS`` first), or None."""
    if env := os.environ.get(OPENBLAS_ENV):
        return Path(env) if Path(env).is_file() else None
    try:
        listing = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    for line in listing.splitlines():
        if found := re.search(r"libopenblas\.so\.0 .*=> (\S+)", line):
            return Path(found.group(1))
    for folder in OPENBLAS_DIRS:
        if (path := Path(folder) / "libopenblas.so.0").is_file():
            return path
    return None


def shim_path(cache_dir: Path) -> Path:
    """Where the compiled kernel for this source and machine lives."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return cache_dir / "native" / f"skinny_gemm-{digest}-{platform.machine()}.so"


def build_shim(cache_dir: Path) -> tuple[Path | None, str]:
    """Compile the kernel once per machine; returns (library or None, why not)."""
    target = shim_path(cache_dir)
    if target.is_file():
        return target, ""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler (install gcc for the skinny-GEMM kernel)"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as e:  # a read-only cache must not stop `silica` from running
        return None, f"cannot write {target.parent}: {e}"
    # -march=native: the library is built on and for this machine only.
    command = [compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    try:
        done = subprocess.run(
            [*command, "-o", staging, str(SOURCE), "-ldl"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            return None, f"compiling {SOURCE.name} failed: {done.stderr.strip()[:300]}"
        os.replace(staging, target)  # atomic: a half-written library is never loaded
        for old in target.parent.glob(f"skinny_gemm-*-{platform.machine()}.so"):
            if old != target:  # built from an earlier source
                old.unlink(missing_ok=True)
        return target, ""
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"compiling {SOURCE.name} failed: {e}"
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def plan(cache_dir: Path) -> FastBlas:
    """Decide what to preload on this machine (builds the kernel if needed)."""
    if os.environ.get(MARKER) == "off":
        return FastBlas((), f"disabled by {MARKER}=off")
    chosen = _plan_blas(cache_dir)
    if jit := jit_front.env(cache_dir):
        return replace(chosen, reason=f"{chosen.reason}; native-ISA MLX JIT", jit=jit)
    return chosen


def _plan_blas(cache_dir: Path) -> FastBlas:
    if not bundles_reference_blas():
        return FastBlas((), "MLX here does not use the bundled reference BLAS")
    openblas = find_openblas()
    if openblas is None:
        return FastBlas(
            (),
            "OpenBLAS not found (Debian/Ubuntu: apt install libopenblas0-pthread); "
            "float32 matmuls run on the slow reference BLAS",
        )
    shim, why_not = build_shim(cache_dir)
    if shim is None:
        return FastBlas((str(openblas),), f"OpenBLAS only: {why_not}")
    return FastBlas((str(shim), str(openblas)), "OpenBLAS + skinny GEMM kernel")


def cache_dir() -> Path:
    """Silica's cache directory (``$SILICA_CACHE_DIR`` or the user cache dir)."""
    if env := os.environ.get("SILICA_CACHE_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "silica"


def reexec_if_needed(argv: list[str]) -> None:
    """Replace this process with one on the fast path, once; returns if not needed."""
    if os.environ.get(MARKER):  # already re-executed, disabled or decided
        return
    chosen = plan(cache_dir())
    if not chosen.preload:
        os.environ.update(chosen.env())
        return
    os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **chosen.env()})


def kernel_loaded() -> bool:
    """True when this process multiplies through the skinny-GEMM kernel."""
    try:
        ctypes.c_long.in_dll(ctypes.CDLL(None), SHIM_SYMBOL)
    except ValueError:
        return False
    return True


def in_use() -> str:
    """What this process multiplies float32 matrices with, read from its mappings."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "platform BLAS"
    names = []
    if "skinny_gemm-" in maps:
        names.append("skinny GEMM kernel")
    if "libopenblas" in maps:
        names.append("OpenBLAS")
    if not names:
        names.append(
            "reference BLAS (slow)" if "mlx_cpu.libs/libblas" in maps else "MLX BLAS"
        )
    if jit_front.active():
        names.append("native-ISA JIT")
    return " + ".join(names)


def main(argv: list[str]) -> int:
    """``python -m engine.fast_blas --env``: print the assignments for a shell."""
    chosen = plan(cache_dir())
    if argv[1:] == ["--env"]:
        print(" ".join(f"{k}={v}" for k, v in chosen.env().items()))
        return 0
    print(f"preload: {' '.join(chosen.preload) or '(nothing)'}\nwhy: {chosen.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
