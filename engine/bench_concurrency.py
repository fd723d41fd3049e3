"""`silica bench --concurrency`: N streams at once, Silica against mlx-lm's batching.

Silica's streams go through the public API, one client thread each, started
together; so the numbers measure whatever the engine does with concurrent requests
(one at a time, or decoded together). mlx-lm's side is its ``BatchGenerator`` (the
loop behind ``batch_generate`` and its server) on the same loaded weights, on the
engine's worker thread. Times are taken where a client sees each token.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import mlx.core as mx
from mlx_lm.generate import BatchGenerator

from engine.bench import WORKLOADS, make_sampler
from engine.runtime import Model
from engine.schema import SamplingParams

DEFAULT_LEVELS = (1, 4, 8, 16)
MAX_STREAMS = 64  # the engine's default queue holds 64 waiting requests
SPECULATION = ("lookup", "auto", "draft")
PERCENTILES = (50, 90, 99)
MLX_LM_CASE = "mlx-lm batch"


@dataclass(frozen=True)
class StreamTiming:
    """One stream of a concurrent run; times are ``time.perf_counter()`` seconds."""

    start: float  # request submitted
    tokens: tuple[float, ...]  # arrival of each generated token
    end: float  # the stream's last chunk arrived
    acceptance: float | None = None  # drafted tokens accepted / drafted

    @property
    def ttft_s(self) -> float:
        return (self.tokens[0] if self.tokens else self.end) - self.start

    @property
    def gaps_s(self) -> list[float]:
        """Seconds between successive tokens: the per-token latency a client sees."""
        return [b - a for a, b in zip(self.tokens, self.tokens[1:], strict=False)]

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, per second after the first."""
        span = self.tokens[-1] - self.tokens[0] if len(self.tokens) > 1 else 0.0
        return (len(self.tokens) - 1) / span if span > 0 else 0.0


@dataclass(frozen=True)
class ConcurrentRun:
    """Every stream of one run of one case at one concurrency level."""

    streams: tuple[StreamTiming, ...]

    @property
    def generated(self) -> int:
        return sum(len(s.tokens) for s in self.streams)

    @property
    def wall_s(self) -> float:
        """From the first request's start to the last stream's end."""
        return max(s.end for s in self.streams) - min(s.start for s in self.streams)

    @property
    def aggregate_tps(self) -> float:
        """Generated tokens of all streams per second of wall time."""
        return self.generated / max(self.wall_s, 1e-9)

    @property
    def decode_tps(self) -> float:
        """Aggregate decode throughput: tokens that arrived while every stream was
        decoding (after the last first token, up to the first last token), per
        second of that window; 0 when the streams never all decoded at once."""
        timed = [s.tokens for s in self.streams if s.tokens]
        if len(timed) < len(self.streams):
            return 0.0
        low, high = max(t[0] for t in timed), min(t[-1] for t in timed)
        if high <= low:
            return 0.0
        inside = sum(1 for t in timed for stamp in t if low < stamp <= high)
        return inside / (high - low)


@dataclass(frozen=True)
class ConcurrencyPlan:
    """What to run: the stream counts, tokens per stream, runs per case."""

    levels: tuple[int, ...] = DEFAULT_LEVELS
    max_tokens: int = 128
    repeats: int = 3
    speculation: str | None = None  # adds a Silica row with it at every level


@dataclass(frozen=True)
class ConcurrencyRow:
    """One case at one level: medians over repeats, percentiles over all of them.

    ``ttft_s`` holds seconds and ``token_ms`` milliseconds at ``PERCENTILES``.
    """

    workload: str
    streams: int
    case: str
    aggregate_tps: float
    decode_tps: float  # aggregate while all streams decode (median over repeats)
    stream_tps: float  # median over streams and repeats
    ttft_s: tuple[float, ...]
    token_ms: tuple[float, ...]
    generated: int  # tokens of all streams in one run (median)
    acceptance: float | None = None
    scaling: float = 1.0  # aggregate against the same case's at the lowest level
    vs_mlx_lm: float = 1.0  # aggregate against mlx-lm's batch at the same level


def parse_levels(text: str) -> tuple[int, ...]:
    """``"1,4,8,16"`` as ``(1, 4, 8, 16)``.

    Raises:
        ValueError: Not a comma-separated list of stream counts in 1..64.
    """
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(1 <= n <= MAX_STREAMS for n in levels):
        raise ValueError(
            f"--concurrency takes stream counts 1..{MAX_STREAMS} separated by "
            f"commas, e.g. 1,4,8,16; got {text!r}."
        )
    return tuple(sorted(set(levels)))


def silica_streams(
    model: Model,
    tokens: list[int],
    streams: int,
    *,
    max_tokens: int,
    speculation: str | None = None,
    draft: Model | None = None,
) -> ConcurrentRun:
    """``streams`` greedy requests through ``Model.stream``, one thread each."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    barrier = threading.Barrier(streams)

    def client() -> StreamTiming:
        barrier.wait()  # submit together, as concurrent clients would
        start, stamps, stats = time.perf_counter(), [], None
        for chunk in model.stream(tokens, params, speculation=speculation, draft=draft):
            if chunk.token is not None:
                stamps.append(time.perf_counter())
            if chunk.finish_reason == "error":
                raise RuntimeError(f"A benchmark stream failed: {chunk.error}")
            stats = chunk.stats or stats
        if stats is None or stats.cached_tokens:
            raise ValueError("Benchmark on an Engine(prompt_cache_bytes=0).")
        return StreamTiming(
            start, tuple(stamps), time.perf_counter(), stats.acceptance_rate
        )

    with ThreadPoolExecutor(streams, thread_name_prefix="bench-client") as pool:
        futures = [pool.submit(client) for _ in range(streams)]
        return ConcurrentRun(tuple(f.result() for f in futures))


def mlx_lm_streams(
    model: Model, tokens: list[int], streams: int, *, max_tokens: int
) -> ConcurrentRun:
    """The same requests through mlx-lm's ``BatchGenerator``, greedy, detokenized."""

    def run(models: dict) -> ConcurrentRun:
        tokenizer = models[model.name].tokenizer
        generator = BatchGenerator(
            models[model.name].model,
            max_tokens=max_tokens,
            stop_tokens=[[t] for t in tokenizer.eos_token_ids],
            sampler=make_sampler(0.0),
            stream=mx.new_stream(mx.default_device()),
        )
        try:
            start = time.perf_counter()
            uids = generator.insert([list(tokens)] * streams)
            stamps: dict[int, list[float]] = {uid: [] for uid in uids}
            ends: dict[int, float] = {}
            detokenizers = {uid: tokenizer.detokenizer for uid in uids}
            while responses := generator.next_generated():
                now = time.perf_counter()
                for r in responses:
                    if r.finish_reason != "stop":  # the EOS token is not text
                        detokenizers[r.uid].add_token(r.token)
                        stamps[r.uid].append(now)
                    if r.finish_reason is not None:
                        ends[r.uid] = now
        finally:
            generator.close()
        return ConcurrentRun(
            tuple(StreamTiming(start, tuple(stamps[u]), ends[u]) for u in uids)
        )

    return model.engine.worker.call(run).result()


def run_concurrency(
    model: Model,
    workloads: list[str],
    plan: ConcurrencyPlan,
    *,
    draft: Model | None = None,
) -> list[ConcurrencyRow]:
    """Measure mlx-lm's batch, Silica plain and (optionally) speculative at each level.

    One warm-up run per case at the lowest level, then ``plan.repeats`` rounds, each
    going through every level and, within it, every case in turn: so a slow spell of
    a shared machine hits each level and case alike (the goals compare levels too).

    Raises:
        ValueError: ``plan.speculation`` is ``"draft"`` without a ``draft`` model.
    """
    if plan.speculation == "draft" and draft is None:
        raise ValueError("--speculation draft needs --draft <model>.")
    cases = _cases(plan, draft)
    rows: list[ConcurrencyRow] = []
    for workload in workloads:
        tokens = model.encode(WORKLOADS[workload])
        for case in cases.values():
            case(model, tokens, plan.levels[0], 4)  # compile, caches, allocator
        runs: dict[tuple[int, str], list[ConcurrentRun]] = {
            (streams, name): [] for streams in plan.levels for name in cases
        }
        for _ in range(plan.repeats):
            for streams, name in runs:
                run = cases[name](model, tokens, streams, plan.max_tokens)
                runs[(streams, name)].append(run)
        rows += [_row(workload, s, name, r) for (s, name), r in runs.items()]
    return _with_ratios(rows)


def _cases(plan: ConcurrencyPlan, draft: Model | None) -> dict:
    table = {
        MLX_LM_CASE: lambda m, t, s, n: mlx_lm_streams(m, t, s, max_tokens=n),
        "silica plain": lambda m, t, s, n: silica_streams(m, t, s, max_tokens=n),
    }
    if plan.speculation:
        spec = {"speculation": plan.speculation, "draft": draft}
        table[f"silica {plan.speculation}"] = lambda m, t, s, n: silica_streams(
            m, t, s, max_tokens=n, **spec
        )
    return table


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100), interpolated between ranks; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _row(
    workload: str, streams: int, case: str, runs: list[ConcurrentRun]
) -> ConcurrencyRow:
    timings = [s for run in runs for s in run.streams]
    ttfts = [s.ttft_s for s in timings]
    gaps = [g * 1e3 for s in timings for g in s.gaps_s]
    accepted = [s.acceptance for s in timings if s.acceptance is not None]
    return ConcurrencyRow(
        workload,
        streams,
        case,
        aggregate_tps=statistics.median(r.aggregate_tps for r in runs),
        decode_tps=statistics.median(r.decode_tps for r in runs),
        stream_tps=statistics.median(s.decode_tps for s in timings),
        ttft_s=tuple(percentile(ttfts, p) for p in PERCENTILES),
        token_ms=tuple(percentile(gaps, p) for p in PERCENTILES),
        generated=int(statistics.median(r.generated for r in runs)),
        acceptance=statistics.median(accepted) if accepted else None,
    )


def _with_ratios(rows: list[ConcurrencyRow]) -> list[ConcurrencyRow]:
    """Fill ``scaling`` and ``vs_mlx_lm`` from the rows' own aggregates."""
    first: dict[tuple[str, str], float] = {}
    batch: dict[tuple[str, int], float] = {}
    for r in rows:
        first.setdefault((r.workload, r.case), r.aggregate_tps)
        if r.case == MLX_LM_CASE:
            batch[(r.workload, r.streams)] = r.aggregate_tps
    return [
        replace(
            r,
            scaling=r.aggregate_tps / max(first[(r.workload, r.case)], 1e-9),
            vs_mlx_lm=r.aggregate_tps / max(batch[(r.workload, r.streams)], 1e-9),
        )
        for r in rows
    ]


def render_concurrency(rows: list[ConcurrencyRow]) -> str:
    """A Markdown table of the rows, then the ratios the throughput goals name."""
    lines = [
        "| workload | streams | case | aggregate tok/s | decode tok/s "
        "| per-stream tok/s "
        "| TTFT p50/p90/p99 s | token ms p50/p90/p99 | tokens | accepted "
        "| vs lowest level | vs mlx-lm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft = "/".join(f"{v:.2f}" for v in r.ttft_s)
        token = "/".join(f"{v:.0f}" for v in r.token_ms)
        accepted = "-" if r.acceptance is None else f"{r.acceptance:.0%}"
        lines.append(
            f"| {r.workload} | {r.streams} | {r.case} | {r.aggregate_tps:.1f} "
            f"| {r.decode_tps:.1f} | {r.stream_tps:.1f} | {ttft} | {token} "
            f"| {r.generated} | {accepted} "
            f"| {r.scaling:.2f}x | {r.vs_mlx_lm:.2f}x |"
        )
    return "\n".join(lines + [""] + summarize_goals(rows))


def summarize_goals(rows: list[ConcurrencyRow]) -> list[str]:
    """Lines for the goals: 8 streams vs 1, speculative vs plain at 4 streams."""
    by = {(r.workload, r.case, r.streams): r for r in rows}
    lines = []
    for (workload, case, streams), row in by.items():
        one = by.get((workload, case, 1))
        if streams == 8 and one and case != MLX_LM_CASE:
            decode = row.decode_tps / max(one.decode_tps, 1e-9)
            overall = row.aggregate_tps / max(one.aggregate_tps, 1e-9)
            lines.append(
                f"- {workload}, {case}: 8 streams give {decode:.2f}x the decode "
                f"tokens/s of 1 stream ({overall:.2f}x counting prefill)"
            )
        plain = by.get((workload, "silica plain", streams))
        if streams == 4 and plain and case not in (MLX_LM_CASE, "silica plain"):
            lines.append(
                f"- {workload}, 4 streams: {case} gives "
                f"{row.aggregate_tps / max(plain.aggregate_tps, 1e-9):.2f}x "
                "the aggregate tokens/s of silica plain"
            )
    return lines
