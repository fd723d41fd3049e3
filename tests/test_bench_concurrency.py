"""`silica bench --concurrency`: the timing arithmetic, a tiny run, the flags."""

from __future__ import annotations

import pytest

from engine.bench_concurrency import (
    ConcurrencyPlan,
    ConcurrentRun,
    StreamTiming,
    parse_levels,
    percentile,
    render_concurrency,
    run_concurrency,
)
from engine.cli import main
from engine.runtime import Engine


def test_run_arithmetic_uses_first_start_and_last_end():
    # Two streams: one starts at 0 and ends at 4, the other waits its turn.
    first = StreamTiming(0.0, (1.0, 2.0, 3.0), 4.0)
    second = StreamTiming(0.5, (5.0, 5.5), 6.0, acceptance=0.5)
    run = ConcurrentRun((first, second))
    assert run.generated == 5 and run.wall_s == 6.0
    assert run.aggregate_tps == pytest.approx(5 / 6)
    assert first.ttft_s == 1.0 and second.ttft_s == 4.5
    assert first.gaps_s == [1.0, 1.0] and second.gaps_s == [0.5]
    assert first.decode_tps == pytest.approx(1.0) and second.decode_tps == 2.0
    assert StreamTiming(0.0, (), 1.0).ttft_s == 1.0  # ended before any token
    assert run.decode_tps == 0.0  # one stream waited for the other: never together


def test_decode_throughput_counts_the_window_where_all_streams_decode():
    # Both decode from t=2 (the later first token) to t=4 (the earlier last one):
    # the tokens at 3 and 4 (first) and 2.5, 3, 3.5, 4 (second) arrive inside it.
    first = StreamTiming(0.0, (1.0, 2.0, 3.0, 4.0), 4.0)
    second = StreamTiming(0.0, (2.0, 2.5, 3.0, 3.5, 4.0, 4.5), 4.5)
    run = ConcurrentRun((first, second))
    assert run.decode_tps == pytest.approx(6 / 2)
    alone = ConcurrentRun((first,))
    assert alone.decode_tps == pytest.approx(first.decode_tps)


def test_percentile_interpolates_between_ranks():
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 50) == 3.0 and percentile(values, 0) == 1.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 100) == 5.0 and percentile([], 99) == 0.0


@pytest.mark.parametrize(
    ("text", "levels"), [("1,4,8,16", (1, 4, 8, 16)), ("8,1,8", (1, 8))]
)
def test_parse_levels(text, levels):
    assert parse_levels(text) == levels


@pytest.mark.parametrize("text", ["", "0", "4,x", "65", "1;4"])
def test_parse_levels_refuses_bad_counts(text):
    with pytest.raises(ValueError, match="1..64"):
        parse_levels(text)


def test_concurrent_rows_on_a_tiny_model(tiny_model_dir):
    plan = ConcurrencyPlan(levels=(1, 3), max_tokens=6, repeats=2, speculation="lookup")
    with Engine(prompt_cache_bytes=0) as engine:
        model = engine.load(str(tiny_model_dir))
        rows = run_concurrency(model, ["code"], plan)
    cases = ("mlx-lm batch", "silica plain", "silica lookup")
    assert [(r.streams, r.case) for r in rows] == [
        (s, c) for s in (1, 3) for c in cases
    ]
    by = {(r.streams, r.case): r for r in rows}
    for streams in (1, 3):
        base = by[(streams, "mlx-lm batch")]
        assert base.vs_mlx_lm == 1.0 and base.acceptance is None
        for case in cases:
            row = by[(streams, case)]
            # greedy on the same prompt: every stream makes the same tokens
            assert row.generated == base.generated
            assert row.generated % streams == 0 and row.aggregate_tps > 0
            assert row.ttft_s == tuple(sorted(row.ttft_s)) and row.ttft_s[0] > 0
            assert row.token_ms == tuple(sorted(row.token_ms))
        lookup = by[(streams, "silica lookup")]
        assert lookup.acceptance is not None
        assert by[(streams, "silica plain")].acceptance is None
    assert all(by[(1, c)].scaling == 1.0 for c in cases)
    one, three = by[(1, "silica plain")], by[(3, "silica plain")]
    assert three.scaling == pytest.approx(three.aggregate_tps / one.aggregate_tps)
    table = render_concurrency(rows)
    assert table.count("| code | ") == len(rows) and "vs mlx-lm" in table


def test_each_round_goes_through_every_level(tiny_model_dir, monkeypatch):
    # The goals compare levels: a slow spell of the machine must not fall on one.
    import engine.bench_concurrency as bench

    calls = []

    def spy(real, case):
        def run(model, tokens, streams, **options):
            calls.append((streams, case))
            return real(model, tokens, streams, **options)

        return run

    monkeypatch.setattr(bench, "mlx_lm_streams", spy(bench.mlx_lm_streams, "mlx-lm"))
    monkeypatch.setattr(bench, "silica_streams", spy(bench.silica_streams, "silica"))
    plan = ConcurrencyPlan(levels=(1, 2), max_tokens=3, repeats=2)
    with Engine(prompt_cache_bytes=0) as engine:
        rows = run_concurrency(engine.load(str(tiny_model_dir)), ["code"], plan)
    one_round = [(1, "mlx-lm"), (1, "silica"), (2, "mlx-lm"), (2, "silica")]
    assert calls == [(1, "mlx-lm"), (1, "silica"), *one_round, *one_round]
    assert [(r.streams, r.generated) for r in rows] == [(1, 3), (1, 3), (2, 6), (2, 6)]


def test_bench_command_runs_the_concurrency_mode(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.md"
    argv = ["bench", "--model", str(tiny_model_dir), "--workload", "chinese"]
    argv += ["--concurrency", "1,2,4", "--speculation", "lookup"]
    argv += ["--max-tokens", "4", "--repeats", "1", "--markdown", str(out)]
    assert main(argv) == 0
    table = out.read_text()
    assert table.count("| silica lookup |") == 3 and "mlx-lm batch" in table
    assert "4 streams: silica lookup gives" in table  # the goal's ratio, spelled out
    assert "| chinese | 4 | silica plain |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--concurrency", "0,4"], "1..64"),
        (["--speculation", "lookup"], "goes with --concurrency"),
        (["--concurrency", "2", "--speculation", "draft"], "needs --draft"),
    ],
)
def test_bench_refuses_bad_concurrency_flags(tiny_model_dir, flags, message, capsys):
    assert main(["bench", "--model", str(tiny_model_dir), *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_concurrent_lookup_on_smollm2(smollm2_gguf, tmp_path):
    from convert import ConvertOptions, convert_model

    options = ConvertOptions(dtype="float32", dequantize=True)  # CPU's fast format
    path = convert_model(str(smollm2_gguf), tmp_path / "f32", options, progress=False)
    plan = ConcurrencyPlan((1, 2), max_tokens=10, repeats=1, speculation="lookup")
    with Engine(prompt_cache_bytes=0) as engine:
        rows = run_concurrency(engine.load(str(path.path)), ["summarize"], plan)
    by = {(r.streams, r.case): r for r in rows}
    for streams in (1, 2):
        base = by[(streams, "mlx-lm batch")].generated
        assert by[(streams, "silica plain")].generated == base == 10 * streams
        # the answer starts by repeating the prompt's text: lookup drafts it
        assert by[(streams, "silica lookup")].acceptance > 0.5
