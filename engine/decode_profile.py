"""Where a decode step's time goes, and how far from the bandwidth floor it is.

Decoding one token reads every weight once, so weights bytes / memory bandwidth is the
floor on a step's time. This splits measured steps into time inside the skinny-GEMM
kernel, inside OpenBLAS (both counted by the preloaded kernel, engine/native) and the
rest (MLX's other ops, graph building, Python), and measures the machine's bandwidth
with a large copy.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from engine.decode import generate_step
from engine.runtime import Model

COUNTERS = ("silica_skinny_ns", "silica_blas_ns")
COPY_BYTES = 256 << 20


@dataclass(frozen=True)
class DecodeProfile:
    """Per decoded token: seconds in total and by part, and the bandwidth floor."""

    step_s: float
    kernel_s: float | None  # None: the kernel is not preloaded, no split
    openblas_s: float | None
    weights_bytes: int
    bandwidth_gbs: float  # GB/s a large copy reaches (bytes read + written)

    @property
    def floor_s(self) -> float:
        """Seconds a step would take if it only read the weights at full bandwidth."""
        return self.weights_bytes / (self.bandwidth_gbs * 1e9)


def _counters() -> dict[str, int] | None:
    process = ctypes.CDLL(None)
    try:
        return {name: ctypes.c_long.in_dll(process, name).value for name in COUNTERS}
    except ValueError:  # the kernel is not preloaded in this process
        return None


def copy_bandwidth(repeats: int = 5) -> float:
    """GB/s of a large numpy copy (read and write counted), best of ``repeats``."""
    src = np.ones(COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * COPY_BYTES / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_decode(model: Model, tokens: list[int], steps: int = 32) -> DecodeProfile:
    """Decode ``steps`` greedy tokens after ``tokens`` and split the time per token."""

    def run(models: dict) -> tuple[float, dict[str, int] | None, dict | None]:
        loaded = models[model.name]
        stream = mx.new_stream(mx.default_device())
        decoding = generate_step(
            mx.array(tokens), loaded.model, stream, max_tokens=steps + 1
        )
        next(decoding)  # prefill and the first token are not decode steps
        before, start = _counters(), time.perf_counter()
        for _ in decoding:
            pass
        return time.perf_counter() - start, before, _counters()

    seconds, before, after = model.engine.worker.call(run).result()
    split = None
    if before is not None and after is not None:
        split = [(after[c] - before[c]) / 1e9 / steps for c in COUNTERS]
    return DecodeProfile(
        step_s=seconds / steps,
        kernel_s=split[0] if split else None,
        openblas_s=split[1] if split else None,
        weights_bytes=round(model.info.memory_gb * 1e9),
        bandwidth_gbs=copy_bandwidth(),
    )


def render_profile(profile: DecodeProfile, name: str) -> str:
    """A Markdown table of the split and the distance to the bandwidth floor."""
    p = profile
    rows = [("decode step", p.step_s)]
    if p.kernel_s is not None and p.openblas_s is not None:
        rest = p.step_s - p.kernel_s - p.openblas_s
        rows += [
            ("  skinny GEMM kernel", p.kernel_s),
            ("  OpenBLAS GEMM", p.openblas_s),
            ("  everything else (MLX ops, Python)", rest),
        ]
    rows.append(("bandwidth floor (weights / copy bandwidth)", p.floor_s))
    lines = [
        f"{name}: {p.weights_bytes / 1e6:.0f} MB of weights per token, copy "
        f"bandwidth {p.bandwidth_gbs:.1f} GB/s, {1 / p.step_s:.1f} tok/s decoded, "
        f"floor {1 / p.floor_s:.1f} tok/s ({p.floor_s / p.step_s:.0%} of it reached)",
        "",
        "| part | ms per token | share |",
        "|---|---|---|",
    ]
    lines += [f"| {part} | {s * 1e3:.1f} | {s / p.step_s:.0%} |" for part, s in rows]
    return "\n".join(lines)
