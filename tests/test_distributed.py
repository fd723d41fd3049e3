"""Sharded inference with mx.distributed: shard layout, lockstep, faults.

The launched tests start two ranks on 127.0.0.1 with ``mlx.launch --backend ring``.
OpenBLAS's thread pool starves the ring backend's sockets when two ranks share two
cores (forwards of 16+ tokens hung), so they run with OPENBLAS_NUM_THREADS=1 (and
OMP_NUM_THREADS=1 for the skinny-GEMM kernel, engine/fast_blas.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import qwen2

from convert import load_shard, write_shards
from convert.shards import RankSlot, read_shard_meta

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOB = ROOT / "tests" / "distributed_job.py"


def tiny_qwen2(dst: Path, tokenizer_dir: Path, *, heads: int = 4, bits=None) -> Path:
    """A random 4-layer qwen2 (pipeline and tensor capable) as an MLX directory."""
    config = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "intermediate_size": 128,
        "num_attention_heads": heads,
        "num_key_value_heads": 2 if heads % 2 == 0 else 1,
        "rms_norm_eps": 1e-6,
        "vocab_size": 288,
        "tie_word_embeddings": True,
        "max_position_embeddings": 256,
    }
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    if bits:
        nn.quantize(model, group_size=32, bits=bits)
        config["quantization"] = {"group_size": 32, "bits": bits, "mode": "affine"}
    dst.mkdir()
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(
        str(dst / "model.safetensors"), weights, metadata={"format": "mlx"}
    )
    (dst / "config.json").write_text(json.dumps(config))
    for f in tokenizer_dir.glob("tokenizer*"):
        shutil.copy(f, dst / f.name)
    return dst


def full_weights(src: Path) -> dict:
    return mx.load(str(src / "model.safetensors"))


@pytest.mark.parametrize("bits", [None, 4])
def test_tensor_shards_load_alone_and_hold_their_slice(tmp_path, tiny_model_dir, bits):
    src = tiny_qwen2(tmp_path / "full", tiny_model_dir, bits=bits)
    out = write_shards(src, tmp_path / "shards", size=2, mode="tensor")
    shutil.rmtree(out / "rank-0")  # rank 1 must not need rank 0's bytes
    model, tokenizer, _, mode = load_shard(out, RankSlot(1, 2))
    assert mode == "tensor" and tokenizer.vocab_size > 0
    ours = dict(tree_flatten(model.parameters()))
    full = full_weights(src)
    q = "model.layers.0.self_attn.q_proj.weight"
    rows = full[q].shape[0] // 2  # all-to-sharded: rank 1 holds the second half
    assert mx.array_equal(ours[q], full[q][rows:])
    down = "model.layers.3.mlp.down_proj.weight"  # sharded-to-all: column halves
    cols = full[down].shape[1] // 2
    assert mx.array_equal(ours[down], full[down][:, cols:])
    assert model.model.layers[0].self_attn.n_heads == 2


def test_pipeline_shards_hold_only_their_layers(tmp_path, tiny_model_dir):
    src = tiny_qwen2(tmp_path / "full", tiny_model_dir, bits=4)
    out = write_shards(src, tmp_path / "shards", size=2, mode="pipeline")
    shutil.rmtree(out / "rank-1")
    model, _, _, _ = load_shard(out, RankSlot(0, 2))
    names = set(dict(tree_flatten(model.parameters())))
    # mlx-lm gives rank 0 the last layers; every rank keeps embeddings and norm.
    assert {n.split(".")[2] for n in names if ".layers." in n} == {"2", "3"}
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    full = full_weights(src)
    key = "model.layers.3.mlp.up_proj.scales"
    assert mx.array_equal(dict(tree_flatten(model.parameters()))[key], full[key])
    shard_bytes = (out / "rank-0" / "shard.safetensors").stat().st_size
    assert shard_bytes < (src / "model.safetensors").stat().st_size


def test_bad_splits_are_refused_with_the_fix(tmp_path, tiny_model_dir):
    src = tiny_qwen2(tmp_path / "full", tiny_model_dir, heads=3)
    with pytest.raises(ValueError, match="num_attention_heads=3 does not split"):
        write_shards(src, tmp_path / "t", size=2, mode="tensor")
    with pytest.raises(ValueError, match="at least 2"):
        write_shards(src, tmp_path / "t", size=1, mode="pipeline")
    out = write_shards(src, tmp_path / "p", size=2, mode="pipeline")
    with pytest.raises(ValueError, match="this group has 3 ranks"):
        read_shard_meta(out, 1, 3)
    with pytest.raises(ValueError, match="is missing"):
        read_shard_meta(out, 2, 2)
    with pytest.raises(FileExistsError, match="--force"):
        write_shards(src, out, size=2, mode="pipeline")


def test_lockstep_refuses_what_the_followers_cannot_replay(tmp_path, tiny_model_dir):
    from engine.kv_cache import make_prompt_cache
    from engine.lockstep import LockstepModel, StepClock

    src = tiny_qwen2(tmp_path / "full", tiny_model_dir)
    model = qwen2.Model(
        qwen2.ModelArgs.from_dict(json.loads((src / "config.json").read_text()))
    )
    lockstep = LockstepModel(model, None, StepClock(), lambda e: e)  # never announces
    with pytest.raises(ValueError, match="one sequence at a time"):
        lockstep(mx.array([[1, 2], [3, 4]]), cache=make_prompt_cache(model))
    foreign = make_prompt_cache(model)
    model(mx.array([[1, 2, 3]]), cache=foreign)  # filled elsewhere: offset 3
    with pytest.raises(ValueError, match="did not fill"):
        lockstep(mx.array([[4]]), cache=foreign)


# --- two ranks on this machine --------------------------------------------------


def launch(model: Path, mode: str, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            str(BIN / "mlx.launch"),
            "--backend", "ring", "-n", "2",
            "--env", "OPENBLAS_NUM_THREADS=1",
            "--env", "OMP_NUM_THREADS=1",  # the skinny-GEMM kernel's threads too
            "--env", f"PYTHONPATH={ROOT}",
            "--python", sys.executable,
            "--", str(JOB), str(model), mode, str(out), *extra,
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def stop_ranks(proc: subprocess.Popen, out: Path) -> str:
    """Kill every rank this test started (by the pids they wrote), then the launcher."""
    for pid_file in out.parent.glob(f"{out.name}.rank*.pid"):
        with contextlib.suppress(ProcessLookupError):  # it may have exited
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    return proc.communicate(timeout=120)[0]


def wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.exists()


@pytest.fixture(scope="module")
def single_process_tokens(qwen05_dir) -> list[int]:
    from engine import Engine
    from tests.distributed_job import PROMPT

    with Engine(safety=None, prompt_cache_bytes=0) as engine:
        model = engine.load(str(qwen05_dir))
        completion = model.generate(PROMPT, max_tokens=16, temperature=0)
    return list(completion.choices[0].tokens)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pipeline", "tensor"])
@pytest.mark.parametrize("layout", ["mlx", "shards"])
def test_two_ranks_match_one_process(
    tmp_path, qwen05_dir, single_process_tokens, mode, layout
):
    model = qwen05_dir
    if layout == "shards":
        model = write_shards(qwen05_dir, tmp_path / "shards", size=2, mode=mode)
    out = tmp_path / "report.json"
    proc = launch(model, mode, out)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    report = json.loads(out.read_text())
    assert report["error"] is None, log
    assert report["tokens"] == single_process_tokens
    assert "rank 1: stopped by rank 0" in log


def run_until_first_token(tmp_path: Path, model: Path, *extra: str):
    out = tmp_path / "report.json"
    proc = launch(model, "pipeline", out, "--max-tokens", "200", *extra)
    assert wait_for(Path(f"{out}.first"), 300), stop_ranks(proc, out)
    follower = int(Path(f"{out}.rank1.pid").read_text())
    return proc, out, follower


def fault(proc, out: Path, follower: int, sig: int) -> tuple[dict, str, float]:
    """Send ``sig`` to rank 1; return rank 0's report, the log and seconds waited."""
    os.kill(follower, sig)
    since = time.monotonic()
    reported = wait_for(out, 60)
    waited = time.monotonic() - since
    log = stop_ranks(proc, out)
    assert reported, log
    return json.loads(out.read_text()), log, waited


@pytest.mark.slow
def test_killed_rank_ends_the_request_with_an_error(tmp_path, qwen05_dir):
    proc, out, follower = run_until_first_token(tmp_path, qwen05_dir)
    report, log, waited = fault(proc, out, follower, signal.SIGKILL)
    assert "lost rank 1" in report["error"] and "Restart" in report["error"]
    assert 0 < len(report["tokens"]) < 200 and waited < 60
    assert "rank 0: The distributed group failed: lost rank 1" in log


@pytest.mark.slow
def test_stuck_rank_trips_the_step_watchdog(tmp_path, qwen05_dir):
    proc, out, follower = run_until_first_token(
        tmp_path, qwen05_dir, "--step-timeout", "20"
    )
    # SIGSTOP: alive but silent, like an unplugged host.
    report, log, waited = fault(proc, out, follower, signal.SIGSTOP)
    assert "rank 1" in report["error"] and "did not answer step" in report["error"]
    assert "within 20 s" in report["error"] and waited < 45
    assert "rank 0: The distributed group failed" in log
