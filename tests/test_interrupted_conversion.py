"""Interrupted conversions (docs/FILES.md, ``interrupt/``): nothing that loads as a
model is left behind, and the next conversion cleans up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convert import (
    ConvertOptions,
    ModelFileError,
    convert_model,
    from_gguf,
    load_checked,
    writer,
)
from convert.manifest import MANIFEST, STAGING_MARK
from tests.hostile_cases import documented
from tests.tiny_gguf import write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
F32 = ConvertOptions(dtype="float32")
# Converts argv[1] into argv[2], but stops for good just before the manifest is
# written, when the staging directory holds config, weights and tokenizer.
STALLED_CONVERSION = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from convert import ConvertOptions, convert_model, writer

    def stall(staging, extra):
        print("stalled", flush=True)
        time.sleep(600)

    writer.write_manifest = stall
    convert_model(sys.argv[1], Path(sys.argv[2]), ConvertOptions(dtype="float32"),
                  progress=False)
    """
)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("interrupt") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def staging_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if STAGING_MARK in p.name]


def test_killed_conversion_leaves_nothing_that_loads(tmp_path, tiny_gguf):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED_CONVERSION, str(tiny_gguf), str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "stalled"
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()
    [left] = staging_dirs(tmp_path)
    assert (left / "config.json").exists() and not (left / MANIFEST).exists()
    with pytest.raises(ModelFileError) as err:
        load_checked(left)
    assert documented()["interrupt/killed"] in str(err.value)
    # The writer is gone, so the next conversion into the folder removes its leftovers.
    convert_model(str(tiny_gguf), out, F32, progress=False)
    assert staging_dirs(tmp_path) == [] and (out / MANIFEST).exists()
    load_checked(out)


def test_ctrl_c_midway_leaves_nothing(tmp_path, tiny_gguf, monkeypatch):
    def one_then_interrupt(g, plans, config, dtype):
        yield from_gguf.convert_tensor(g, plans[0], config, dtype)
        raise KeyboardInterrupt

    monkeypatch.setattr(from_gguf, "iter_weights", one_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as err:
        convert_model(str(tiny_gguf), tmp_path / "out", F32, progress=False)
    assert documented()["interrupt/ctrl-c"] in repr(err.value)
    assert list(tmp_path.iterdir()) == []


def test_no_disk_space_is_found_before_anything_is_written(
    tmp_path, tiny_gguf, monkeypatch
):
    real = shutil.disk_usage
    monkeypatch.setattr(
        writer.shutil, "disk_usage", lambda path: real(path)._replace(free=1000)
    )
    with pytest.raises(OSError) as err:
        convert_model(str(tiny_gguf), tmp_path / "new" / "out", F32, progress=False)
    assert documented()["interrupt/no-disk-space"] in str(err.value)
    assert list(tmp_path.iterdir()) == []
