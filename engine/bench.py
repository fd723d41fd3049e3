"""`silica bench`: Silica against mlx-lm on the same loaded weights, in one process.

Every case runs on the engine's worker thread (mlx-lm's loop included, with the
worker's stream), after a warm-up, ``repeats`` times; tables report medians and the
ratio of each case to mlx-lm's plain decoding.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.generate import speculative_generate_step as mlx_lm_speculative_step
from mlx_lm.sample_utils import make_sampler

from engine.decode import generate_step
from engine.runtime import Model
from engine.schema import SamplingParams

SUMMARIZE_TEXT = (
    "Lighthouses were once kept by families who lived beside the light. Every evening "
    "the keeper climbed the tower, trimmed the wick, polished the lens and wound the "
    "clockwork that turned it. In storms the keeper stayed awake all night, because a "
    "light that failed could cost a ship. Today most lighthouses are automatic: "
    "sensors switch the lamps on at dusk, and a technician visits a few times a year."
)
WORKLOADS = {
    "code": [
        {
            "role": "user",
            "content": "Write a Python function that merges two "
            "sorted lists into one sorted list, with a docstring and an example.",
        }
    ],
    "summarize": [
        {
            "role": "user",
            "content": "Repeat this text exactly, then give a "
            f"one-sentence summary.\n\n{SUMMARIZE_TEXT}",
        }
    ],
    "chinese": [{"role": "user", "content": "请用中文简单介绍一下长城的历史。"}],
}


@dataclass(frozen=True)
class Measurement:
    """One run of one case: token counts and seconds."""

    prompt_tokens: int
    generated: int
    ttft_s: float
    decode_s: float
    peak_gb: float
    acceptance: float | None = None  # drafted tokens accepted / drafted

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / max(self.ttft_s, 1e-9)

    @property
    def decode_tps(self) -> float:
        return (self.generated - 1) / max(self.decode_s, 1e-9)


@dataclass(frozen=True)
class BenchRow:
    """Medians of ``repeats`` runs of one case on one workload."""

    workload: str
    case: str
    prompt_tps: float
    decode_tps: float
    ttft_s: float
    peak_gb: float
    generated: int
    acceptance: float | None = None
    decode_ratio: float = 1.0  # against mlx-lm plain on the same workload


def _mlx_lm_run(
    model: Model, tokens: list[int], make_steps, k: int | None = None
) -> Measurement:
    """Time one of mlx-lm's loops (greedy, with its detokenizer) on the worker.

    With ``k`` draft tokens per round, acceptance is drafts accepted / drafted:
    every round ends with one token of the target's, so rounds = emitted - accepted.
    """

    def run(models: dict) -> Measurement:
        loaded = models[model.name]
        detokenizer = loaded.tokenizer.detokenizer
        detokenizer.reset()
        mx.reset_peak_memory()
        stream = mx.new_stream(mx.default_device())
        start, first, generated, accepted = time.perf_counter(), None, 0, 0
        for token, _, *from_draft in make_steps(models, stream):
            first = first or time.perf_counter()
            if token in loaded.tokenizer.eos_token_ids:
                break
            detokenizer.add_token(token)
            generated += 1
            accepted += bool(from_draft and from_draft[0])
        end = time.perf_counter()
        return Measurement(
            len(tokens),
            generated,
            first - start,
            end - first,
            mx.get_peak_memory() / 1e9,
            None if k is None else accepted / max((generated - accepted) * k, 1),
        )

    return model.engine.worker.call(run).result()


def mlx_lm_plain(model: Model, tokens: list[int], max_tokens: int, *_) -> Measurement:
    """mlx-lm's generate_step."""
    return _mlx_lm_run(
        model,
        tokens,
        lambda models, stream: generate_step(
            mx.array(tokens),
            models[model.name].model,
            stream,
            max_tokens=max_tokens,
            sampler=make_sampler(0.0),
        ),
    )


def mlx_lm_speculative(
    model: Model, tokens: list[int], max_tokens: int, draft: Model, k: int
) -> Measurement:
    """mlx-lm's speculative_generate_step with ``k`` draft tokens."""
    return _mlx_lm_run(
        model,
        tokens,
        lambda models, stream: mlx_lm_speculative_step(
            mx.array(tokens),
            models[model.name].model,
            models[draft.name].model,
            stream,
            num_draft_tokens=k,
            max_tokens=max_tokens,
            sampler=make_sampler(0.0),
        ),
        k,
    )


def silica(model: Model, tokens: list[int], max_tokens: int, **spec) -> Measurement:
    """Silica's public API end to end: queue, worker, decode loop, chunks."""
    model.engine.worker.call(lambda models: mx.reset_peak_memory()).result()
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    stats = model.generate(tokens, params, **spec).stats[0]
    if stats.cached_tokens:
        raise ValueError(
            "Benchmark on an Engine(prompt_cache_bytes=0): prefill was cached."
        )
    decode_s = (stats.completion_tokens - 1) / max(stats.decode_tps, 1e-9)
    return Measurement(
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.ttft_s,
        decode_s,
        stats.peak_memory_gb,
        stats.acceptance_rate,
    )


Case = Callable[[Model, list[int], int], Measurement]
DRAFT_TOKENS = (
    2,
    3,
    4,
    6,
)  # mlx-lm's speculative mode is run at each; the best is kept


def cases(draft: Model | None) -> dict[str, Case]:
    """The cases to run: plain and lookup always; draft-model ones given a draft."""
    table: dict[str, Case] = {
        "mlx-lm plain": mlx_lm_plain,
        "silica plain": silica,
        "silica lookup": lambda m, t, n: silica(m, t, n, speculation="lookup"),
    }
    if draft is not None:
        for k in DRAFT_TOKENS:
            table[f"mlx-lm draft k={k}"] = lambda m, t, n, k=k: mlx_lm_speculative(
                m, t, n, draft, k
            )
        table["silica draft"] = lambda m, t, n: silica(m, t, n, draft=draft)
    table["silica auto"] = lambda m, t, n: silica(
        m, t, n, speculation="auto", draft=draft
    )
    return table


def run_bench(
    model: Model,
    workloads: list[str],
    *,
    draft: Model | None = None,
    max_tokens: int = 128,
    repeats: int = 3,
) -> list[BenchRow]:
    """Measure every case on every workload; one warm-up run each, then ``repeats``.

    Repeats go round the cases in turn, so a slow spell of a shared machine hits
    every case alike. Among mlx-lm's draft-model runs only the fastest ``k`` is
    kept, as its best.
    """
    rows = []
    table = cases(draft)
    for workload in workloads:
        tokens = model.encode(WORKLOADS[workload])
        for case in table.values():
            case(model, tokens, 8)  # warm-up: compile, caches, allocator
        runs: dict[str, list[Measurement]] = {name: [] for name in table}
        for _ in range(repeats):
            for name, case in table.items():
                runs[name].append(case(model, tokens, max_tokens))
        measured = [_median_row(workload, name, r) for name, r in runs.items()]
        rows += _with_ratios(_best_mlx_lm_draft(measured))
    return rows


def _best_mlx_lm_draft(rows: list[BenchRow]) -> list[BenchRow]:
    drafts = [r for r in rows if r.case.startswith("mlx-lm draft")]
    best = max(drafts, key=lambda r: r.decode_tps, default=None)
    return [r for r in rows if r not in drafts or r is best]


def _with_ratios(rows: list[BenchRow]) -> list[BenchRow]:
    base = rows[0].decode_tps  # mlx-lm plain
    return [
        BenchRow(**{**vars(r), "decode_ratio": r.decode_tps / max(base, 1e-9)})
        for r in rows
    ]


def _median_row(workload: str, case: str, runs: list[Measurement]) -> BenchRow:
    return BenchRow(
        workload,
        case,
        prompt_tps=statistics.median(r.prompt_tps for r in runs),
        decode_tps=statistics.median(r.decode_tps for r in runs),
        ttft_s=statistics.median(r.ttft_s for r in runs),
        peak_gb=max(r.peak_gb for r in runs),
        generated=int(statistics.median(r.generated for r in runs)),
        acceptance=runs[0].acceptance,
    )


def render(rows: list[BenchRow]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| workload | case | prompt tok/s | decode tok/s | TTFT s | peak GB | tokens "
        "| accepted | decode vs mlx-lm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.case} | {r.prompt_tps:.1f} | {r.decode_tps:.1f} "
            f"| {r.ttft_s:.2f} | {r.peak_gb:.2f} | {r.generated} "
            f"| {'-' if r.acceptance is None else f'{r.acceptance:.0%}'} "
            f"| {r.decode_ratio:.2f}x |"
        )
    return "\n".join(lines)
