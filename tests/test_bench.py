"""`silica bench` on a tiny model: every case runs, same greedy tokens, sane numbers."""

from __future__ import annotations

import pytest

from engine.bench import render, run_bench
from engine.cli import main
from engine.runtime import Engine


def test_bench_rows_compare_cases_on_each_workload(tiny_model_dir):
    with Engine(prompt_cache_bytes=0) as engine:
        model = engine.load(str(tiny_model_dir))
        # the summarize text is longer than the tiny model's 256-token context
        rows = run_bench(model, ["chinese", "code"], max_tokens=12, repeats=2)
    cases = ("mlx-lm plain", "silica plain", "silica lookup", "silica auto")
    assert [(r.workload, r.case) for r in rows] == [
        (w, c) for w in ("chinese", "code") for c in cases
    ]
    for base, *ours in zip(*(rows[i :: len(cases)] for i in range(4)), strict=True):
        assert base.decode_ratio == 1.0
        for row in ours:
            assert row.generated == base.generated  # greedy: the same tokens
            assert row.decode_tps > 0 and row.prompt_tps > 0 and row.peak_gb > 0
        assert ours[0].acceptance is None
        assert ours[1].acceptance is not None and ours[2].acceptance is not None
    table = render(rows)
    assert table.count("\n") == len(rows) + 1 and "decode vs mlx-lm" in table


def test_bench_command_writes_markdown(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.md"
    model = str(tiny_model_dir)
    argv = ["bench", "--model", model, "--draft", model, "--workload", "code"]
    assert (
        main([*argv, "--max-tokens", "6", "--repeats", "1", "--markdown", str(out)])
        == 0
    )
    table = out.read_text()
    assert "silica draft" in table and "mlx-lm plain" in capsys.readouterr().out
    assert table.count("mlx-lm draft k=") == 1  # only mlx-lm's best k is kept
    assert "| 100% |" in table  # a model drafting for itself is always accepted


@pytest.mark.parametrize("flags", [["--max-tokens", "1"], ["--repeats", "0"]])
def test_bench_refuses_bad_flags(tiny_model_dir, flags, capsys):
    assert main(["bench", "--model", str(tiny_model_dir), *flags]) == 2
    assert "error:" in capsys.readouterr().err
