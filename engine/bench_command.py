"""The `silica bench` subcommand: flags in, a Markdown table out."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine import fast_blas
from engine.bench import WORKLOADS, render, run_bench
from engine.bench_concurrency import (
    SPECULATION,
    ConcurrencyPlan,
    parse_levels,
    render_concurrency,
    run_concurrency,
)
from engine.bench_stock import render_stock, stock_rows
from engine.decode_profile import profile_decode, render_profile
from engine.distributed import add_distributed_flags
from engine.distributed_bench import run_distributed_bench
from engine.load_flags import add_load_flags, load_options
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
  silica bench --model smollm2-135m-instruct --concurrency 1,4,8,16 \
      --speculation lookup --workload summarize
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
    p.add_argument(
        "--concurrency",
        metavar="N,N,...",
        help="instead: run N greedy streams at once at each level, Silica's engine "
        "against mlx-lm's BatchGenerator (default workload: summarize)",
    )
    p.add_argument(
        "--speculation",
        choices=SPECULATION,
        help="with --concurrency: add a Silica row with this speculation per level",
    )
    p.add_argument(
        "--vs-stock",
        action="store_true",
        help="also run mlx-lm as pip installs it (reference BLAS, weights as stored) "
        "in a child process, and print Silica's ratios against it",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: split a decode step's time (skinny GEMM kernel, OpenBLAS, the "
        "rest) and compare it with the memory-bandwidth floor",
    )
    add_load_flags(p)
    add_distributed_flags(p)
    p.set_defaults(func=run_bench_command)


def _concurrency_plan(args: argparse.Namespace) -> ConcurrencyPlan | None:
    if args.concurrency is None:
        if args.speculation:
            raise ValueError("--speculation goes with --concurrency N,N,...")
        return None
    return ConcurrencyPlan(
        parse_levels(args.concurrency),
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        speculation=args.speculation,
    )


def run_bench_command(args: argparse.Namespace) -> int:
    if not 2 <= args.max_tokens <= 4096 or not 1 <= args.repeats <= 50:
        raise ValueError("--max-tokens must be 2..4096 and --repeats 1..50.")
    if args.distributed:  # under mlx.launch: 1 rank against the group
        return run_distributed_bench(args)
    plan = _concurrency_plan(args)
    if args.vs_stock and (plan or args.profile):
        raise ValueError("--vs-stock goes with the default mode only.")
    # No prompt cache, so every run pays its own prefill like mlx-lm's does.
    with Engine(prompt_cache_bytes=0, **load_options(args)) as engine:
        model = engine.load(args.model)
        draft = engine.load(args.draft) if args.draft else None
        workloads = args.workload or (["summarize"] if plan else sorted(WORKLOADS))
        if args.profile:
            tokens = model.encode(WORKLOADS[workloads[0]])
            profile = profile_decode(model, tokens, steps=args.max_tokens)
            table = render_profile(profile, args.model)
        elif plan:
            table = render_concurrency(
                run_concurrency(model, workloads, plan, draft=draft)
            )
        else:
            rows = run_bench(
                model,
                workloads,
                draft=draft,
                max_tokens=args.max_tokens,
                repeats=args.repeats,
            )
            table = render(rows)
    if args.vs_stock:
        stock = stock_rows(model.info.path, workloads, args.max_tokens, args.repeats)
        table += "\n\n" + render_stock(rows, stock)
    info = model.info
    print(
        f"model: {args.model} ({info.stored_format} stored, computing in "
        f"{info.compute_format}: {info.format_reason}; BLAS: {fast_blas.in_use()})"
        f"\n\n{table}"
    )
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0
