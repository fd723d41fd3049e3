"""Run one conversion: resolve the source, plan, write atomically, report quality."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from convert import from_gguf, from_hf
from convert.from_hf import dequantize_model
from convert.gguf_file import GGUFFile
from convert.options import ConvertOptions, default_dtype
from convert.quality import QualityReport, eval_tokens, evaluate
from convert.source import Source, resolve_source
from convert.writer import check_destination, write_model

VERSION = "0.1.0"


@dataclass(frozen=True)
class ConversionPlan:
    """What a conversion will produce, known before any tensor is computed.

    Attributes:
        source: The resolved checkpoint.
        tensors: Number of source tensors.
        quantized: How many of them are written quantized.
        output_bytes: Size of the weights written (bytes).
        peak_memory_bytes: Memory the conversion needs at most (bytes, estimate).
    """

    source: Source
    tensors: int
    quantized: int
    output_bytes: int
    peak_memory_bytes: int

    def render(self) -> str:
        return (
            f"source   {self.source.path} ({self.source.kind})\n"
            f"tensors  {self.tensors} ({self.quantized} quantized)\n"
            f"output   {self.output_bytes / 1e6:,.1f} MB\n"
            f"memory   {self.peak_memory_bytes / 1e6:,.1f} MB peak (estimate)"
        )


@dataclass(frozen=True)
class ConversionResult:
    """A finished conversion: where it went and, if asked, how close it stays."""

    path: Path
    plan: ConversionPlan
    quality: QualityReport | None


def plan_conversion(
    source: Source, options: ConvertOptions, scratch: Path
) -> ConversionPlan:
    """Work out sizes without writing anything (``silica convert --dry-run``).

    Args:
        source: The resolved checkpoint.
        options: The conversion options.
        scratch: A temporary directory (pickle checkpoints are unpacked there).
    """
    if source.kind == "hf":
        model, _, config = from_hf.load_lazy(source.path, options, scratch=scratch)
        return _plan_hf(source, model, config, options)[0]
    with GGUFFile(source.path) as g:
        plans = from_gguf.plan_tensors(g, from_gguf.gguf_config(g), options)
    return _plan_gguf(source, plans, options)


def _plan_gguf(
    source: Source, plans: list[from_gguf.TensorPlan], options: ConvertOptions
) -> ConversionPlan:
    sizes = [p.nbytes(options.mx_dtype().size) for p in plans]
    # One tensor decoded to float32 and its output are alive at once.
    peak = max(4 * p.elements + size for p, size in zip(plans, sizes, strict=True))
    quantized = sum(p.bits is not None for p in plans)
    return ConversionPlan(source, len(plans), quantized, sum(sizes), peak)


def _plan_hf(
    source: Source, model: nn.Module, config: dict, options: ConvertOptions
) -> tuple[ConversionPlan, dict]:
    """Cast and quantize ``model`` lazily (in place) and size the result."""
    source_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    config = from_hf.prepare_model(model, config, options)
    weights = tree_flatten(model.parameters())
    quantized = sum(name.endswith(".scales") for name, _ in weights)
    output = sum(v.nbytes for _, v in weights)
    # mlx-lm's lazy graph holds the source weights while the output is written.
    plan = ConversionPlan(
        source, len(weights) - 2 * quantized, quantized, output, source_bytes + output
    )
    return plan, config


def convert_model(
    src: str,
    dst: Path,
    options: ConvertOptions,
    *,
    quality: bool = False,
    quality_tokens: int | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> ConversionResult:
    """Convert ``src`` into an MLX model directory at ``dst``.

    Args:
        src: A catalog name, a ``.gguf`` file, a Hugging Face / MLX directory, or a
            Hugging Face repo id.
        dst: Output directory; written atomically.
        options: Bits, group size, recipe, dtype, force, allow_pickle.
        quality: Also measure perplexity and KL divergence against the source on the
            shipped evaluation text.
        quality_tokens: Score only the first this many tokens of it (default: all).
        progress: Show progress bars.
        cache_dir: Where catalog models are cached (default: the user cache).

    Returns:
        The output path, the plan and the quality report (``None`` unless asked).

    Raises:
        ModelFileError: The source is malformed, truncated or unsupported.
        FileExistsError: ``dst`` exists and ``options.force`` is false.
        OSError: Not enough disk space.
    """
    dst = Path(dst)
    check_destination(dst, force=options.force, needed_bytes=0)  # before any download
    source = resolve_source(src, cache_dir=cache_dir, progress=progress)
    manifest = {
        "source": str(source.path),
        "silica": VERSION,
        "options": {k: v for k, v in vars(options).items() if k != "force"},
    }
    with tempfile.TemporaryDirectory(prefix="silica-convert-") as scratch:
        if source.kind == "gguf":
            plan = _convert_gguf(source, dst, options, manifest, progress)
        else:
            plan = _convert_hf(source, dst, options, manifest, progress, Path(scratch))
        report = None
        if quality:
            report = measure_quality(
                source, dst, max_tokens=quality_tokens, progress=progress
            )
    return ConversionResult(dst, plan, report)


def _convert_gguf(
    source: Source, dst: Path, options: ConvertOptions, manifest: dict, progress: bool
) -> ConversionPlan:
    if options.recipe:
        raise ValueError(
            "--recipe applies to Hugging Face sources; GGUF files keep their own mix."
        )
    with GGUFFile(source.path) as g:
        config = from_gguf.gguf_config(g)
        plans = from_gguf.plan_tensors(g, config, options)
        plan = _plan_gguf(source, plans, options)
        check_destination(dst, force=options.force, needed_bytes=plan.output_bytes)
        if quantization := from_gguf.quantization_config(plans, options):
            config["quantization"] = quantization
        config["torch_dtype"] = str(options.mx_dtype()).split(".")[-1]
        write_model(
            dst,
            from_gguf.iter_weights(g, plans, config, options.mx_dtype()),
            config,
            save_tokenizer=from_gguf.save_gguf_tokenizer(source.path),
            total=len(plans),
            force=options.force,
            manifest=manifest,
            progress=progress,
        )
    return plan


def _convert_hf(
    source: Source,
    dst: Path,
    options: ConvertOptions,
    manifest: dict,
    progress: bool,
    scratch: Path,
) -> ConversionPlan:
    model, tokenizer, config = from_hf.load_lazy(source.path, options, scratch=scratch)
    plan, config = _plan_hf(source, model, config, options)
    check_destination(dst, force=options.force, needed_bytes=plan.output_bytes)
    write_model(
        dst,
        from_hf.iter_weights(model),
        config,
        save_tokenizer=from_hf.save_hf_tokenizer(source.path, tokenizer),
        total=len(tree_flatten(model.parameters())),
        force=options.force,
        manifest=manifest,
        progress=progress,
    )
    return plan


def load_reference(source: Source) -> nn.Module:
    """The source model in float32, unquantized: the quality report's yardstick."""
    options = ConvertOptions(dtype="float32")
    if source.kind == "hf":
        with tempfile.TemporaryDirectory(prefix="silica-ref-") as scratch:
            model, _, config = from_hf.load_lazy(
                source.path, options, scratch=Path(scratch)
            )
            from_hf.prepare_model(model, config, options)
            mx.eval(model.parameters())
            return model
    with GGUFFile(source.path) as g:
        config = from_gguf.gguf_config(g)
        plans = [
            replace(p, bits=None, exact=False)
            for p in from_gguf.plan_tensors(g, config, options)
        ]
        model = from_gguf.build_model(config)
        for arrays in from_gguf.iter_weights(g, plans, config, mx.float32):
            mx.eval(list(arrays.values()))
            model.load_weights(list(arrays.items()), strict=False)
        return model


def measure_quality(
    source: Source, dst: Path, *, max_tokens: int | None = None, progress: bool = True
) -> QualityReport:
    """Perplexity and KL divergence of ``dst`` against its source on the shipped text.

    On the CPU backend the converted model is scored with its weights dequantized to
    float32: the same values the quantized kernels multiply by, through BLAS, which is
    ~15x faster there than MLX's quantized CPU matmul for whole windows (SmolLM2
    prefill, docs/BENCHMARKS.md).
    """
    converted, tokenizer, _ = from_hf.load_lazy(dst, ConvertOptions())
    if default_dtype() == "float32":
        dequantize_model(converted)
    reference = load_reference(source)
    tokens = eval_tokens(tokenizer)[:max_tokens]
    return evaluate(reference, converted, tokens, progress=progress)
