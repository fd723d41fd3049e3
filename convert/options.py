"""The validated options of one conversion, built at the edge and trusted inside."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DTYPES = ("float16", "bfloat16", "float32")
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert a checkpoint.

    Attributes:
        bits: Target bits for float (and non-MLX-native GGUF) weights; ``None`` keeps
            Hugging Face weights in float and GGUF weights at their nearest width.
        group_size: Values per quantization group; ``None`` means 64 for Hugging Face
            sources and 32 (GGUF's block size) for GGUF sources.
        recipe: A mixed-precision recipe from mlx-lm (``RECIPES``): more bits for
            ``v_proj``, ``down_proj`` and ``lm_head`` in the first and last layers.
        dtype: dtype of float weights, scales and biases; ``None`` picks float16 on a
            GPU and float32 on the CPU backend, where half-precision kernels are slow.
        force: Replace an existing output directory.
        allow_pickle: Accept pickle checkpoints (``*.bin``), which can run code on load.
        dequantize: Write every weight as a float of ``dtype`` (GGUF blocks decoded,
            MLX-quantized layers unpacked): on the CPU backend BLAS on float32 beats
            MLX's quantized kernels.
    """

    bits: int | None = None
    group_size: int | None = None
    recipe: str | None = None
    dtype: str | None = None
    force: bool = False
    allow_pickle: bool = False
    dequantize: bool = False

    def __post_init__(self) -> None:
        if self.dequantize and self.quantizes:
            raise ValueError("--dequantize writes float weights; drop --bits/--recipe.")
        if self.bits is not None and self.bits not in BITS:
            raise ValueError(f"--bits must be one of {BITS}, got {self.bits}.")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ValueError(
                f"--group-size must be one of {GROUP_SIZES}, got {self.group_size}."
            )
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {RECIPES}, got {self.recipe!r}.")

    @property
    def quantizes(self) -> bool:
        return self.bits is not None or self.recipe is not None

    def mx_dtype(self) -> mx.Dtype:
        """The float dtype to write, resolving ``None`` for the backend in use."""
        return getattr(mx, self.dtype or default_dtype())


def default_dtype() -> str:
    """float16 where a GPU runs MLX; float32 on the CPU (fp16 scales: ~40x slower)."""
    return "float16" if mx.metal.is_available() or mx.cuda.is_available() else "float32"
