"""Atomic model writing: nothing half-written at the destination, a manifest last."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import mlx.core as mx
import pytest

from convert.writer import (
    MANIFEST,
    STAGING_MARK,
    _host_tag,
    check_destination,
    remove_stale_staging,
    write_model,
)
from tests.test_from_gguf import F32
from tests.tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Weights and config of a converted tiny model, to write again in these tests."""
    from convert.conversion import convert_model

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_gguf(root / "tiny.gguf")
    out = convert_model(str(root / "tiny.gguf"), root / "out", F32, progress=False).path
    weights = mx.load(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    return out, weights, config


def save_tokenizer_from(src):
    def save(dst):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (dst / name).write_bytes((src / name).read_bytes())

    return save


def test_manifest_lists_every_file_with_its_sha256(tmp_path, tiny_model):
    src, weights, config = tiny_model
    dst = write_model(
        tmp_path / "m",
        iter([weights]),
        config,
        save_tokenizer=save_tokenizer_from(src),
        total=1,
        progress=False,
    )
    manifest = json.loads((dst / MANIFEST).read_text())
    names = {p.name for p in dst.iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == names
    for name, entry in manifest["files"].items():
        data = (dst / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_failure_midway_leaves_nothing(tmp_path, tiny_model):
    src, weights, config = tiny_model

    def weights_then_crash():
        yield dict(list(weights.items())[:3])
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_model(
            tmp_path / "m",
            weights_then_crash(),
            config,
            save_tokenizer=save_tokenizer_from(src),
            total=2,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path, tiny_model):
    src, weights, config = tiny_model
    partial = dict(list(weights.items())[:-1])
    with pytest.raises(ValueError):
        write_model(
            tmp_path / "m",
            iter([partial]),
            config,
            save_tokenizer=save_tokenizer_from(src),
            total=1,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_only_when_the_new_model_is_complete(tmp_path, tiny_model):
    src, weights, config = tiny_model
    dst = tmp_path / "m"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        write_model(
            dst,
            (_ for _ in ()).throw(RuntimeError("boom")),
            config,
            save_tokenizer=save_tokenizer_from(src),
            total=1,
            force=True,
            progress=False,
        )
    assert (dst / "old.txt").read_text() == "old"
    write_model(
        dst,
        iter([weights]),
        config,
        save_tokenizer=save_tokenizer_from(src),
        total=1,
        force=True,
        progress=False,
    )
    assert not (dst / "old.txt").exists() and (dst / MANIFEST).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_stale_staging_dirs_are_removed_fresh_ones_kept(tmp_path):
    stale = tmp_path / f".m{STAGING_MARK}abc"
    fresh = tmp_path / f".n{STAGING_MARK}def"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert remove_stale_staging(tmp_path) == [stale]
    assert fresh.exists() and not stale.exists()


def test_destination_checks(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        check_destination(tmp_path / "exists", force=False, needed_bytes=1)
    check_destination(tmp_path / "exists", force=True, needed_bytes=1)
    with pytest.raises(OSError, match="Not enough disk space"):
        check_destination(tmp_path / "new", force=False, needed_bytes=1 << 60)


def test_stale_staging_of_a_dead_process_is_removed_at_once(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = _host_tag()
    gone = tmp_path / f".m{STAGING_MARK}{host}-{dead}-abcd"
    mine = tmp_path / f".m{STAGING_MARK}{host}-{os.getpid()}-abcd"
    elsewhere = tmp_path / f".m{STAGING_MARK}0badc0de-{dead}-abcd"
    for path in (gone, mine, elsewhere):
        path.mkdir()
    assert remove_stale_staging(tmp_path) == [gone]
    assert mine.exists() and elsewhere.exists()  # alive, or another host's: kept


def test_free_space_is_checked_on_the_nearest_existing_folder(tmp_path, monkeypatch):
    seen = []
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: seen.append(p) or real(p))
    check_destination(tmp_path / "a" / "b" / "out", force=False, needed_bytes=1)
    assert seen == [tmp_path]


def test_written_directory_is_not_private_to_its_owner(tmp_path, tiny_model):
    src, weights, config = tiny_model
    dst = write_model(
        tmp_path / "m",
        iter([weights]),
        config,
        save_tokenizer=save_tokenizer_from(src),
        total=1,
        progress=False,
    )
    # mkdtemp's 0700 would have hidden a shared model directory from other users.
    (tmp_path / "plain").mkdir()
    assert dst.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
