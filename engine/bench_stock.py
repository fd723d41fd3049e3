"""mlx-lm as a user gets it from pip, measured in a child process for `silica bench`.

The in-process cases of `silica bench` share Silica's process: its preloaded BLAS and
kernel (engine/fast_blas.py) and its compute format (engine/compute_format.py). What a
user of the stock ``mlx[cpu]`` wheel sees is neither, so this baseline runs mlx-lm's
loop in a fresh interpreter without the preload, on the weights as stored.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from engine import jit_front
from engine.fast_blas import HUGE_PAGES, MARKER, TUNABLES

STRIPPED = ("LD_PRELOAD",)


def stock_env() -> dict[str, str]:
    """This process's environment without the fast path: preload, JIT front, huge
    pages."""
    env = jit_front.without(dict(os.environ))
    env = {k: v for k, v in env.items() if k not in STRIPPED}
    tunables = [t for t in env.pop(TUNABLES, "").split(":") if t and t != HUGE_PAGES]
    if tunables:
        env[TUNABLES] = ":".join(tunables)
    env[MARKER] = "off"
    return env


def stock_rows(
    model_dir: str, workloads: list[str], max_tokens: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median prompt and decode tokens/s of stock mlx-lm per workload.

    Raises:
        RuntimeError: The child process failed (its last error lines included).
    """
    request = json.dumps([model_dir, workloads, max_tokens, repeats])
    done = subprocess.run(
        [sys.executable, "-m", "engine.bench_stock", request],
        capture_output=True,
        text=True,
        env=stock_env(),
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"stock mlx-lm run failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def render_stock(silica_rows: list, stock: dict[str, dict[str, float]]) -> str:
    """A Markdown table: stock mlx-lm against Silica's plain decoding (``BenchRow``)."""
    lines = [
        "| workload | stock mlx-lm prompt tok/s | decode tok/s | Silica prompt tok/s "
        "| decode tok/s | prompt vs stock | decode vs stock |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in silica_rows:
        if row.case != "silica plain" or row.workload not in stock:
            continue
        base = stock[row.workload]
        lines.append(
            f"| {row.workload} | {base['prompt_tps']:.1f} | {base['decode_tps']:.1f} "
            f"| {row.prompt_tps:.1f} | {row.decode_tps:.1f} "
            f"| {row.prompt_tps / base['prompt_tps']:.2f}x "
            f"| {row.decode_tps / max(base['decode_tps'], 1e-9):.2f}x |"
        )
    return "\n".join(lines)


def _measure(model_dir: str, workloads: list[str], max_tokens: int, repeats: int):
    import mlx.core as mx

    from convert import load_checked
    from engine.bench import WORKLOADS
    from engine.decode import generate_step

    model, tokenizer, _ = load_checked(model_dir)
    rows = {}
    for workload in workloads:
        tokens = tokenizer.apply_chat_template(
            WORKLOADS[workload], add_generation_prompt=True
        )
        runs = [
            _run(mx, generate_step, model, tokenizer, tokens, max_tokens)
            for _ in range(repeats + 1)  # the first is the warm-up
        ][1:]
        rows[workload] = {
            key: statistics.median(run[key] for run in runs) for key in runs[0]
        }
    return rows


def _run(mx, generate_step, model, tokenizer, tokens, max_tokens) -> dict[str, float]:
    start, first, generated = time.perf_counter(), None, 0
    for token, _ in generate_step(mx.array(tokens), model, max_tokens=max_tokens):
        first = first or time.perf_counter()
        if token in tokenizer.eos_token_ids:
            break
        generated += 1
    end = time.perf_counter()
    return {
        "prompt_tps": len(tokens) / (first - start),
        "decode_tps": (generated - 1) / max(end - first, 1e-9),
        "generated": generated,
    }


if __name__ == "__main__":
    print(json.dumps(_measure(*json.loads(sys.argv[1]))))
