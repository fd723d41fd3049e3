"""`silica bench --distributed`: per-token latency on 1 rank and on the whole group.

Run it under ``mlx.launch`` like ``silica serve --distributed``. Rank 0 loads the
whole model locally (the 1-rank case) and its shard (the group case) and runs them
in turns; the other ranks follow. On one machine this measures the overhead of
sharding (collectives, lockstep announcements), not a speedup.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

from convert import is_sharded
from engine.bench import WORKLOADS
from engine.distributed import join_cluster
from engine.runtime import Engine, Model


@dataclass(frozen=True)
class LatencyRow:
    """Medians over the repeats of one case."""

    case: str
    ms_per_token: float
    ttft_s: float
    tokens: int


def measure(model: Model, case: str, tokens: list[int], max_tokens: int) -> LatencyRow:
    """One greedy run: decode milliseconds per token after the first, and TTFT."""
    stats = model.generate(tokens, max_tokens=max_tokens, temperature=0).stats[0]
    ms = 1000 / stats.decode_tps if stats.decode_tps else float("nan")
    return LatencyRow(case, ms, stats.ttft_s, stats.completion_tokens)


def run_distributed_bench(args: argparse.Namespace) -> int:
    """Rank 0 prints the table; the other ranks follow until it is done.

    Raises:
        ValueError: Not under mlx.launch, or a ``--shards`` layout (the 1-rank case
            needs the whole model).
    """
    cluster = join_cluster(args)
    if not cluster.is_leader:
        return cluster.follow(args.model)
    if is_sharded(Path(args.model)):
        raise ValueError(
            "bench --distributed needs the whole model, not a --shards one."
        )
    size, mode = cluster.group.size(), args.shard_mode
    with Engine(prompt_cache_bytes=0, safety=None) as engine, cluster:
        local = engine.load(args.model, name="local")
        sharded = cluster.load(engine, args.model, name="sharded")
        tokens = local.encode(WORKLOADS[(args.workload or ["summarize"])[0]])
        cases = {"1 rank": local, f"{size} ranks, {mode}": sharded}
        for model in cases.values():
            measure(model, "warm-up", tokens, 4)
        runs: dict[str, list[LatencyRow]] = {case: [] for case in cases}
        for _ in range(args.repeats):  # in turns, so a slow spell hits both
            for case, model in cases.items():
                runs[case].append(measure(model, case, tokens, args.max_tokens))
    table = render_latency([_median(case, rows) for case, rows in runs.items()])
    print(f"model: {args.model}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


def _median(case: str, rows: list[LatencyRow]) -> LatencyRow:
    return LatencyRow(
        case,
        statistics.median(r.ms_per_token for r in rows),
        statistics.median(r.ttft_s for r in rows),
        int(statistics.median(r.tokens for r in rows)),
    )


def render_latency(rows: list[LatencyRow]) -> str:
    """A Markdown table; the last column is each case's latency over the first's."""
    base = rows[0].ms_per_token
    lines = [
        "| ranks | ms/token | TTFT s | tokens | vs 1 rank |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.ms_per_token:.1f} | {r.ttft_s:.2f} | {r.tokens} "
            f"| {r.ms_per_token / base:.2f}x |"
        )
    return "\n".join(lines)
