"""KV cache options: quantized and rotating caches, and what admission counts."""

from __future__ import annotations

import threading

import pytest

from engine import Engine, InsufficientMemory
from engine.kv_cache import KVOptions
from engine.memory_budget import quantized_kv_bytes

PROMPT = [1, 5, 9, 42, 7, 11, 13, 17, 19, 23]
CHAT = [{"role": "user", "content": "Name the largest planet."}]


@pytest.mark.parametrize(
    ("bits", "max_size", "message"),
    [
        (3, None, "kv_bits must be 4 or 8"),
        (None, 8, "max_kv_size must be at least 16"),
        (8, 64, "cannot be combined"),
    ],
)
def test_bad_options_say_what_is_allowed(bits, max_size, message):
    with pytest.raises(ValueError, match=message):
        KVOptions(bits, max_size)
    with pytest.raises(ValueError, match=message):
        Engine(kv_bits=bits, max_kv_size=max_size)


def test_quantized_kv_bytes():
    full = 4 * 1024  # 1,024 float32 values
    assert quantized_kv_bytes(full, 4, 8) == 1024 + 16 * 2 * 4
    assert quantized_kv_bytes(full, 4, 4) == 512 + 16 * 2 * 4


def test_quantized_cache_needs_heads_mlx_can_group(tiny_model_dir):
    with (
        Engine(safety=None, kv_bits=8) as engine,
        pytest.raises(ValueError, match="multiple of 32 values; this model's have 16"),
    ):
        engine.load(str(tiny_model_dir), name="q8")


@pytest.mark.slow
def test_quantized_cache_generates_and_is_charged_less(smollm2_gguf):
    with Engine(safety=None, compute_format="float32") as engine:
        plain = engine.load(str(smollm2_gguf), name="plain")
        want = plain.generate(CHAT, max_tokens=16, temperature=0).text
    with Engine(safety=None, compute_format="float32", kv_bits=8) as engine:
        model = engine.load(str(smollm2_gguf), name="q8")
        assert model.info.kv_bits == 8
        assert model.info.kv_bytes_per_token < plain.info.kv_bytes_per_token / 3
        got = model.generate(CHAT, max_tokens=16, temperature=0).text
        # 8-bit keys and values barely move a 16-token greedy answer.
        assert got[:20] == want[:20], (got, want)
        with pytest.raises(ValueError, match="quantized or rotating KV cache"):
            model.generate(CHAT, max_tokens=4, speculation="lookup")


def test_rotating_cache_runs_past_its_size(tiny_model_dir):
    with Engine(safety=None, max_kv_size=16) as engine:
        model = engine.load(str(tiny_model_dir), name="rot")
        out = model.generate(PROMPT, max_tokens=40, temperature=0)
        assert out.usage.completion_tokens == 40  # 50 tokens through a 16-token cache


def test_rotating_cache_is_admitted_where_a_full_one_is_not(tiny_model_dir):
    with Engine(safety=None) as probe:
        info = probe.load(str(tiny_model_dir), name="m").info
    budget = round(info.memory_gb * 1e9) + info.kv_bytes_per_token * 64
    with Engine(safety=None, memory_budget=budget) as engine:
        model = engine.load(str(tiny_model_dir), name="m")
        with pytest.raises(InsufficientMemory, match="KV cache for 110 tokens"):
            model.generate(PROMPT, max_tokens=100)
    with Engine(safety=None, memory_budget=budget, max_kv_size=32) as engine:
        model = engine.load(str(tiny_model_dir), name="m")
        # Greedy: a sampled first token can be EOS, which ends with no tokens.
        out = model.generate(PROMPT, max_tokens=100, temperature=0)
        assert out.usage.completion_tokens > 0


def test_concurrent_requests_with_kv_options_all_finish(tiny_model_dir):
    with Engine(safety=None, max_kv_size=24) as engine:
        model = engine.load(str(tiny_model_dir), name="rot")
        results: list[int] = []

        def ask(seed: int) -> None:
            out = model.generate(PROMPT, max_tokens=12, temperature=0.8, seed=seed)
            results.append(out.usage.completion_tokens)

        threads = [threading.Thread(target=ask, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 3 and all(r > 0 for r in results)
