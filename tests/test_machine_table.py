"""Machine measurements: measured once, cached per MLX/device/BLAS, never fatal."""

from __future__ import annotations

import json

from engine import machine_table


def test_measures_once_then_reads_the_cache(tmp_path):
    calls = []
    (tmp_path / "speeds.json").write_text("{not json")  # a torn earlier write
    for _ in range(2):
        got = machine_table.measured(
            tmp_path, "speeds", lambda: calls.append(1) or [1.5]
        )
        assert got == [1.5]
    assert calls == [1]
    (value,) = json.loads((tmp_path / "speeds.json").read_text()).values()
    assert value == [1.5]
    assert not list(tmp_path.glob("*.tmp"))  # written by rename, nothing left over


def test_an_unwritable_cache_still_answers(tmp_path, caplog):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    got = machine_table.measured(blocked, "speeds", lambda: {"x": 1.0})
    assert got == {"x": 1.0}
    assert "Could not cache" in caplog.text


def test_an_entry_the_caller_refuses_is_measured_again(tmp_path):
    def positive(value) -> bool:
        return isinstance(value, float) and value > 0

    first = machine_table.measured(tmp_path, "speeds", lambda: -1.0)
    assert first == -1.0  # measured and stored, though the next caller refuses it
    again = machine_table.measured(tmp_path, "speeds", lambda: 2.0, valid=positive)
    assert again == 2.0
    cached = machine_table.measured(tmp_path, "speeds", lambda: 3.0, valid=positive)
    assert cached == 2.0
