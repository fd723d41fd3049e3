"""The `silica` command line: one parser, one subcommand per job."""

from __future__ import annotations

import argparse

from convert import add_convert_parser, add_models_parser, run_command
from engine import fast_blas
from engine.bench_command import add_bench_parser
from engine.chat_command import add_chat_parser, add_generate_parser
from engine.safety.eval_command import add_safety_eval_parser
from engine.serve_command import add_serve_parser

VERSION = "0.1.0"


def version() -> str:
    """Silica's version, MLX's, the device, and what runs float32 matmuls."""
    import mlx.core as mx

    device = mx.default_device()
    return (
        f"silica {VERSION} (MLX {mx.__version__}, {device.type.name}; "
        f"BLAS: {fast_blas.in_use()})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silica",
        description="On-device LLM runtime on MLX: convert and quantize checkpoints, "
        "run them, serve them.",
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(sub)
    add_chat_parser(sub)
    add_serve_parser(sub)
    add_bench_parser(sub)
    add_convert_parser(sub)
    add_models_parser(sub)
    add_safety_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``silica`` with ``argv`` (default: the process arguments).

    Returns:
        The exit status: 0 on success, 2 for bad input, 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
