"""Memory admission: loads and requests that would not fit the budget are refused."""

from __future__ import annotations

import pytest

from engine import (
    Engine,
    InsufficientMemory,
    ModelPool,
    SamplingParams,
    Side,
)
from engine.memory_budget import (
    MemoryLedger,
    default_memory_budget,
    kv_bytes_per_token,
    physical_memory,
    weight_file_bytes,
)

TINY_KV = 2 * 2 * 16 * 2 * 4  # layers x kv_heads x head_dim x (k, v) x float32
SMOLLM2 = {  # SmolLM2-135M's config.json, the fields that matter
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
}


def test_kv_bytes_per_token_follows_the_config():
    assert kv_bytes_per_token(SMOLLM2, 2) == 30 * 3 * 64 * 2 * 2
    assert kv_bytes_per_token(SMOLLM2 | {"head_dim": 128}, 4) == 30 * 3 * 128 * 2 * 4
    no_gqa = {k: v for k, v in SMOLLM2.items() if k != "num_key_value_heads"}
    assert kv_bytes_per_token(no_gqa, 2) == 30 * 9 * 64 * 2 * 2
    assert kv_bytes_per_token({"text_config": SMOLLM2}, 2) == 30 * 3 * 64 * 2 * 2


def test_the_default_budget_is_a_share_of_ram_or_what_mlx_recommends():
    ram = physical_memory()
    assert 0 < default_memory_budget({}) < ram
    recommended = {"max_recommended_working_set_size": 12 << 30}
    assert default_memory_budget(recommended) == 12 << 30


def test_the_ledger_says_what_is_needed_and_what_is_free():
    ledger = MemoryLedger(1_000_000_000)
    ledger.record("a", 600_000_000, kv_per_token=100_000)
    ledger.check_load("a", 900_000_000)  # replacing a: its own weights do not count
    with pytest.raises(InsufficientMemory, match=r"need 500.00 MB but 400.00 MB") as e:
        ledger.check_load("b", 500_000_000)
    assert e.value.shortfall_bytes == 100_000_000 and "a 600.00 MB" in str(e.value)
    ledger.check_request([("a", 4000)])
    with pytest.raises(InsufficientMemory, match="room for about 4000 tokens"):
        ledger.check_request([("a", 3000), ("a", 2000)])  # a target and its draft
    with pytest.raises(ValueError, match="budget"):
        MemoryLedger(0)


def test_the_tiny_model_counts_its_kv_cache(model):
    assert model.info.kv_bytes_per_token == TINY_KV


def test_max_tokens_is_cut_to_the_context_left(model):
    request = model.prepare("The cat", SamplingParams(max_tokens=1 << 20))
    assert len(request.tokens) + request.params.max_tokens == 256
    reply = model.generate("The cat", max_tokens=1 << 20, temperature=0)
    assert reply.usage.completion_tokens <= 256 - reply.usage.prompt_tokens


@pytest.fixture(scope="module")
def tight(tiny_model_dir):
    """An engine whose budget holds the tiny model and a KV cache of 250 tokens."""
    weights = weight_file_bytes(tiny_model_dir)
    with Engine(memory_budget=weights + 250 * TINY_KV) as engine:
        yield engine, engine.load(str(tiny_model_dir), name="tiny")


def test_a_request_over_the_budget_is_refused_before_it_queues(tight):
    engine, tiny = tight
    # Greedy: a sampled first token can be EOS, which ends with no tokens.
    out = tiny.generate("The cat", max_tokens=100, temperature=0)
    assert out.usage.completion_tokens > 0
    with pytest.raises(InsufficientMemory, match="KV cache for .* tokens") as e:
        tiny.stream("The cat", max_tokens=230, draft=tiny)  # two caches of ~236
    assert e.value.needed_bytes > e.value.available_bytes
    assert engine.queued[0] == 0
    sides = [Side(tiny, "The cat", SamplingParams(max_tokens=200))] * 2
    with pytest.raises(InsufficientMemory):
        engine.compare(sides)  # side by side, both caches are held at once
    assert len(list(engine.compare(sides, interleave=False))) > 2  # one at a time


def test_a_load_over_the_budget_is_refused_before_loading(tiny_model_dir):
    weights = weight_file_bytes(tiny_model_dir)
    with Engine(memory_budget=int(weights * 1.5)) as engine:
        engine.load(str(tiny_model_dir), name="tiny")
        with pytest.raises(InsufficientMemory, match="load tiny2.*loaded: tiny"):
            engine.load(str(tiny_model_dir), name="tiny2")
        held = engine.worker.call(lambda models: sorted(models)).result()
        assert held == ["tiny"]
        engine.unload("tiny")
        assert engine.load(str(tiny_model_dir), name="tiny2").name == "tiny2"


def test_the_pool_unloads_the_least_recently_used_model_to_make_room(tiny_model_dir):
    weights = weight_file_bytes(tiny_model_dir)
    with Engine(memory_budget=int(weights * 2.5)) as engine:
        pool = ModelPool(engine, roots=(tiny_model_dir.parent,))
        pool.load(str(tiny_model_dir), name="a")
        pool.load(str(tiny_model_dir), name="b")
        with pytest.raises(InsufficientMemory):  # the operator's loads never evict
            pool.load(str(tiny_model_dir), name="c")
        assert pool["a"].generate("hi", max_tokens=2)  # now a is the most recent
        picked = pool.get_or_load(str(tiny_model_dir))  # a request: b makes room
        assert sorted(pool) == sorted(["a", picked.name])
        assert engine.worker.call(lambda models: sorted(models)).result() == sorted(
            pool
        )
        assert picked.generate("hi", max_tokens=2).usage.completion_tokens == 2
