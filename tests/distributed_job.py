"""Run under ``mlx.launch``: rank 0 generates greedily and writes a JSON report.

usage: distributed_job.py MODEL MODE OUT.json [--max-tokens N] [--step-timeout S]
Ranks > 0 follow. Each rank writes its pid to ``OUT.json.rankR.pid``; rank 0 writes
``OUT.json.first`` at the first token (so a test can kill a rank mid-generation),
then ``OUT.json`` with the tokens, the error and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from engine import Engine
from engine.distributed import Cluster, DistributedConfig

PROMPT = [{"role": "user", "content": "Write a haiku about rivers."}]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("mode")
    p.add_argument("out", type=Path)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--step-timeout", type=float, default=60.0)
    args = p.parse_args()
    config = DistributedConfig(mode=args.mode, step_timeout_s=args.step_timeout)
    cluster = Cluster.join(config)
    Path(f"{args.out}.rank{cluster.rank}.pid").write_text(str(os.getpid()))
    if not cluster.is_leader:
        return cluster.follow(args.model)
    # mlx.launch stops every rank once one dies; let rank 0 write its report first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with Engine(prompt_cache_bytes=0, safety=None) as engine, cluster:
        model = cluster.load(engine, args.model)
        report = generate(model, args)
        args.out.write_text(json.dumps(report))
    return 0


def generate(model, args) -> dict:
    tokens, error, start = [], None, time.monotonic()
    try:
        stream = model.stream(PROMPT, max_tokens=args.max_tokens, temperature=0)
        for chunk in stream:
            if chunk.token is not None:
                tokens.append(chunk.token)
                if len(tokens) == 1:
                    Path(f"{args.out}.first").write_text("1")
            if chunk.finish_reason == "error":
                error = chunk.error
    except Exception as e:  # the test reads what rank 0 reported
        error = f"{type(e).__name__}: {e}"
    return {"tokens": tokens, "error": error, "seconds": time.monotonic() - start}


if __name__ == "__main__":
    raise SystemExit(main())
