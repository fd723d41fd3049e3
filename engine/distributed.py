"""Sharded inference across machines with mx.distributed (run under ``mlx.launch``).

Every rank loads only its shard (mlx-lm's pipeline or tensor sharding). Rank 0
runs the normal ``Engine``: it tokenizes, samples, detokenizes and streams, and
announces each forward to the other ranks (``engine.lockstep``), which replay it
and serve nothing else. A ring collective blocks forever when a peer hangs, so a
watchdog on rank 0 ends the request in flight once a step overruns its deadline
and marks the group failed: later requests get ``GroupFailed`` until the group is
restarted (run ``mlx.launch`` again).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from engine.decode import LoadedModel, Speculation, decode
from engine.kv_cache import make_prompt_cache
from engine.loader import describe
from engine.lockstep import (
    STOP,
    Forward,
    LockstepModel,
    StepClock,
    announce,
    follow_forwards,
)
from engine.runtime import Model
from engine.schema import Chunk
from engine.shard_loader import MODES, agree, load_sharded, model_path
from engine.worker import EngineDied, GenerateRequest, Job

if TYPE_CHECKING:
    from engine.runtime import Engine

WATCH_INTERVAL_S = 0.2


@dataclass(frozen=True)
class DistributedConfig:
    """How the group shards the model and how long rank 0 waits for the others.

    Args:
        mode: ``"pipeline"`` (each rank holds a run of layers; suits slow links)
            or ``"tensor"`` (each rank holds a slice of every layer; two
            collectives per layer, needs a fast link such as Thunderbolt).
        step_timeout_s: Longest one forward (a decode step or a prefill chunk of
            512 tokens) may take before rank 0 fails the request, seconds.
        load_timeout_s: Longest the ranks may take to load their shards, seconds.
    """

    mode: str = "pipeline"
    step_timeout_s: float = 60.0
    load_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.step_timeout_s <= 0 or self.load_timeout_s <= 0:
            raise ValueError("step_timeout_s and load_timeout_s must be positive.")


class GroupFailed(EngineDied):
    """A rank of the distributed group died or stopped answering; restart the group."""


def log(message: str) -> None:
    """One line on stderr (mlx.launch forwards every rank's stderr)."""
    print(f"[silica distributed] {message}", file=sys.stderr, flush=True)


def peers(group: Any) -> str:
    """The ranks rank 0 depends on, with their addresses when mlx.launch set them."""
    hosts: list = []
    try:  # the ring backend's hostfile: one list of "ip:port" per rank
        hosts = json.loads(Path(os.environ.get("MLX_HOSTFILE", "")).read_text())
    except (OSError, ValueError):
        hosts = []
    names = [
        f"rank {r}" + (f" ({hosts[r][0]})" if r < len(hosts) and hosts[r] else "")
        for r in range(1, group.size())
    ]
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


class Cluster:
    """This process's place in the group: rank 0 leads an ``Engine``, others follow.

    Use ``Cluster.join(config)`` in every rank; then ranks > 0 call ``follow(src)``
    and rank 0 ``load(engine, src)`` (a ``Model``), inside ``with cluster:`` so the
    followers are told to stop at the end.
    """

    def __init__(self, group: Any, config: DistributedConfig) -> None:
        self.group, self.config = group, config
        self.clock = StepClock()
        self.failed: str | None = None
        self._engine: Engine | None = None
        self._stream: mx.Stream | None = None
        self._worker_group: Any = None
        self._job: Job | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @classmethod
    def join(cls, config: DistributedConfig) -> Cluster:
        """Join the group ``mlx.launch`` set up (ring, MPI or JACCL).

        Raises:
            ValueError: The process was not started by ``mlx.launch`` (one rank).
        """
        group = mx.distributed.init()
        if group.size() < 2:
            raise ValueError(
                "--distributed needs at least 2 ranks: start every host with "
                "`mlx.launch --hostfile hosts.json -- silica serve --distributed` "
                "(see docs/DISTRIBUTED.md)."
            )
        return cls(group, config)

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def is_leader(self) -> bool:
        return self.group.rank() == 0

    def follow(self, src: str) -> int:
        """Ranks > 0: load the shard and replay rank 0's forwards until it stops.

        Returns:
            The exit status: 0 when rank 0 stopped the group, 1 when it was lost.
        """
        path = model_path(src)
        model, _, _, mode = load_sharded(path, self.group, self.config.mode)
        agree(self.group, mode)
        log(f"rank {self.rank}/{self.group.size()}: {mode} shard of {path} loaded")
        try:
            steps = follow_forwards(model, self.group)
        except RuntimeError as e:  # a lost peer, or out of step with rank 0
            log(f"rank {self.rank}: lost the group ({e}); restart the whole group")
            return 1
        log(f"rank {self.rank}: stopped by rank 0 after {steps} forwards")
        return 0

    def load(self, engine: Engine, src: str, *, name: str | None = None) -> Model:
        """Rank 0: load its shard on ``engine``'s worker, as the others load theirs.

        Raises:
            GroupFailed: A rank did not finish loading within ``load_timeout_s``.
            ValueError: As ``load_sharded`` does.
        """
        path, name = model_path(src), name or src
        self._engine = engine
        future = engine.worker.call(lambda models: self._load(models, name, path))
        try:
            loaded = future.result(timeout=self.config.load_timeout_s)
        except FutureTimeout:
            raise self._fail(
                f"{peers(self.group)} did not finish loading within "
                f"{self.config.load_timeout_s:.0f} s"
            ) from None
        info = loaded.info
        engine.ledger.record(name, round(info.memory_gb * 1e9), info.kv_bytes_per_token)
        threading.Thread(
            target=self._watch, name="silica-watchdog", daemon=True
        ).start()
        log(f"rank 0/{self.group.size()}: {self.config.mode} shard of {path} loaded")
        return DistributedModel(engine, name, info, loaded.tokenizer, cluster=self)

    def _load(self, models: dict, name: str, path: Path) -> LoadedModel:
        # Collectives run on streams of the thread that called init: take this
        # (the worker) thread's handle on the group.
        self._worker_group = group = mx.distributed.init()
        model, tokenizer, config, mode = load_sharded(path, group, self.config.mode)
        agree(group, mode)
        self._stream = mx.new_stream(mx.default_device())
        lockstep = LockstepModel(model, group, self.clock, self._lost)
        loaded = describe(name, path, model, tokenizer, config)
        models[name] = LoadedModel(lockstep, tokenizer, config, loaded.info)
        return models[name]

    def submit(self, name: str, request: GenerateRequest) -> Job:
        """Rank 0: run ``request`` in lockstep on the worker; read chunks from the job.

        Raises:
            GroupFailed: The group failed earlier; it must be restarted.
        """
        if self.failed:
            raise GroupFailed(self.failed)
        job = Job(request)
        self._engine.worker.call(lambda models: self._run(models, name, job))
        return job

    def _run(self, models: dict, name: str, job: Job) -> None:
        with self._lock:
            if self.failed:
                job.out.put(_error(self.failed))
                job.out.put(None)
                return
            self._job = job
        try:
            for chunk in self._chunks(models, models[name], job):
                if not self._deliver(job, chunk):
                    return
        except Exception as e:  # one bad request must not stop the engine
            self._deliver(job, _error(f"{type(e).__name__}: {e}"))
        finally:
            with self._lock:
                if self._job is job:
                    job.out.put(None)
                    self._job = None

    def _chunks(self, models: dict, loaded: LoadedModel, job: Job):
        request = job.request
        speculation = None
        if request.speculation:  # the draft model runs on rank 0 alone
            draft = models[request.draft_model] if request.draft_model else None
            auto = request.speculation == "auto"
            speculation = Speculation(draft, request.num_draft_tokens, auto)
        for index in range(request.params.n):
            yield from decode(
                loaded,
                list(request.tokens),
                request.params,
                cache=make_prompt_cache(loaded.model),
                index=index,
                stream=self._stream,
                produced=[],
                speculation=speculation,
                cancelled=job.cancel.is_set,
            )

    def _deliver(self, job: Job, chunk: Chunk) -> bool:
        with self._lock:
            if self._job is not job:  # the watchdog already ended it
                return False
            job.out.put(chunk)
            return True

    def _lost(self, error: Exception) -> GroupFailed:
        return self._fail(f"lost {peers(self.group)}: {error}")

    def _fail(self, reason: str) -> GroupFailed:
        """Mark the group failed, log it once, end the job in flight."""
        message = (
            f"The distributed group failed: {reason}. Restart every rank "
            "(stop this command and run mlx.launch again)."
        )
        with self._lock:
            first, self.failed = self.failed is None, self.failed or message
            if self._job is not None:
                self._job.out.put(_error(message))
                self._job.out.put(None)
                self._job = None
        if first:
            log(f"rank 0: {message}")
        return GroupFailed(message)

    def _watch(self) -> None:
        limit = self.config.step_timeout_s
        while not self._closed.wait(WATCH_INTERVAL_S) and not self.failed:
            stalled = self.clock.stalled_for()
            if stalled > limit:
                self._fail(
                    f"{peers(self.group)} did not answer step {self.clock.steps} "
                    f"within {limit:.0f} s (host down, unreachable or stuck)"
                )

    def shutdown(self, timeout: float = 10.0) -> None:
        """Rank 0: tell the followers to exit (skipped once the group failed)."""
        self._closed.set()
        if self._engine is None or self.failed or not self.is_leader:
            return
        stop = self._engine.worker.call(
            lambda models: announce(self._worker_group, Forward(STOP))
        )
        try:
            stop.result(timeout=timeout)
        except (FutureTimeout, RuntimeError) as e:
            log(f"rank 0: could not stop the other ranks ({e!r})")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class DistributedModel(Model):
    """A model sharded across the group; rank 0's handle (see ``Model``).

    Requests run one at a time, in lockstep with the other ranks; a draft model
    for speculative decoding is an ordinary model loaded on rank 0's engine.
    """

    def __init__(self, *args: Any, cluster: Cluster) -> None:
        super().__init__(*args)
        self.cluster = cluster

    def _submit(self, request: GenerateRequest) -> Job:
        return self.cluster.submit(self.name, request)


def _error(message: str) -> Chunk:
    return Chunk("", finish_reason="error", error=message)


def add_distributed_flags(p: Any) -> None:
    """Add ``--distributed``, ``--shard-mode`` and ``--step-timeout`` to a parser."""
    p.add_argument(
        "--distributed",
        action="store_true",
        help="shard the (first) model across the ranks mlx.launch started; rank 0 "
        "serves, the others follow (see docs/DISTRIBUTED.md)",
    )
    p.add_argument(
        "--shard-mode",
        choices=MODES,
        default="pipeline",
        help="with --distributed: split layers (pipeline) or every layer's matrices "
        "(tensor, needs a fast link) (%(default)s)",
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        default=DistributedConfig.step_timeout_s,
        metavar="S",
        help="with --distributed: fail a request when one forward takes longer "
        "than S seconds (a rank died or hangs) (%(default)s)",
    )


def join_cluster(args: Any) -> Cluster | None:
    """The group this process belongs to, or None without ``--distributed``."""
    if not getattr(args, "distributed", False):
        return None
    return Cluster.join(
        DistributedConfig(mode=args.shard_mode, step_timeout_s=args.step_timeout)
    )
