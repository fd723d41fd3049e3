"""The `silica bench` subcommand: flags in, a Markdown table out."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.bench import WORKLOADS, render, run_bench
from engine.runtime import Engine

EPILOG = """\
Every case runs in this process on the same loaded weights, greedy, after a warm-up;
the table shows medians of --repeats runs and decode speed relative to mlx-lm's plain
loop. Cases: mlx-lm plain, Silica plain, Silica prompt lookup, Silica auto (lookup,
plus the draft model when given), and with --draft mlx-lm's speculative mode (best
of k=2,3,4,6) and Silica's exact draft-model mode.
Timings on shared machines are noisy: compare ratios from one run.

examples:
  silica bench --model smollm2-135m-instruct
  silica bench --model qwen2.5-coder-1.5b-instruct --draft qwen2.5-coder-0.5b-instruct
  silica bench --model smollm2-135m-instruct --markdown docs/bench-smollm2.md
"""


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``silica bench``."""
    p = subparsers.add_parser(
        "bench",
        help="measure Silica against mlx-lm on the same weights",
        description="Prompt tokens/s, decode tokens/s, time to first token and peak "
        "memory of mlx-lm's loop and Silica's engine on the same model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="catalog name, directory or .gguf")
    p.add_argument(
        "--draft",
        metavar="M",
        help="a draft model (same tokenizer) for the draft-model speculation cases",
    )
    p.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        action="append",
        help="repeat to pick several (default: all)",
    )
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per run (128)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case (3)")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    p.set_defaults(func=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    if not 2 <= args.max_tokens <= 4096 or not 1 <= args.repeats <= 50:
        raise ValueError("--max-tokens must be 2..4096 and --repeats 1..50.")
    # No prompt cache, so every run pays its own prefill like mlx-lm's does.
    with Engine(prompt_cache_bytes=0) as engine:
        model = engine.load(args.model)
        draft = engine.load(args.draft) if args.draft else None
        rows = run_bench(
            model,
            args.workload or sorted(WORKLOADS),
            draft=draft,
            max_tokens=args.max_tokens,
            repeats=args.repeats,
        )
    table = render(rows)
    print(f"model: {args.model} ({model.info.bits:.2f} bits/weight)\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0
