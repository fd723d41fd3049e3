"""The adversarial file suite (issue 7): each case of docs/FILES.md through the entry
points users call, with its documented error and nothing touched outside the output.

The cases are built in tests/hostile_cases.py; interrupted conversions are in
tests/test_interrupted_conversion.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from convert import ConvertOptions, ModelFileError, convert_model, load_checked
from tests.hostile_cases import (
    CASES,
    INTERRUPTIONS,
    WEIGHTS,
    Sources,
    documented,
    evil_pickle,
    mlx,
)
from tests.tiny_gguf import write_tiny_gguf

F32 = ConvertOptions(dtype="float32")
ENTRIES = {
    "L": lambda path, out: load_checked(path),
    "C": lambda path, out: convert_model(str(path), out, F32, progress=False),
    "P": lambda path, out: convert_model(
        str(path),
        out,
        ConvertOptions(dtype="float32", allow_pickle=True),
        progress=False,
    ),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_model_dir) -> Sources:
    root = tmp_path_factory.mktemp("hostile-sources")
    write_tiny_gguf(root / "tiny.gguf")  # what tiny_model_dir was converted from
    return Sources(tiny_model_dir, root / "tiny.gguf")


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """Everything a case may see; ``outside/`` is what links point out to."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple]:
    """Mode, size, mtime and content hash of everything under ``root`` (no links
    followed, FIFOs not opened)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            regular = stat.S_ISREG(info.st_mode)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if regular else ""
            key = str(path.relative_to(root))
            state[key] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return state


def test_every_documented_case_has_a_test():
    assert documented().keys() == CASES.keys() | set(INTERRUPTIONS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_gets_its_documented_error(case, sources, sandbox):
    build, entries = CASES[case]
    path = build(sources, sandbox)
    before = snapshot(sandbox)
    for entry in entries:
        with pytest.raises(ModelFileError) as err:
            ENTRIES[entry](path, sandbox / "out")
        assert documented()[case] in str(err.value), entry
        assert str(sandbox) in str(err.value)  # names the file
        assert not (sandbox / "out").exists()
        assert snapshot(sandbox) == before, f"{entry} touched files"
    assert not (sandbox / "outside" / "pwned").exists()  # no pickle code ran
    assert not (sandbox / "evil").exists()


def loads(path: Path) -> None:
    model, tokenizer, config = load_checked(path)
    assert config["model_type"] == "llama" and tokenizer.encode("hi")


def test_link_inside_the_model_directory_loads(sources, sandbox):
    d = mlx(sources, sandbox, manifest=True)
    (d / "weights").mkdir()
    (d / WEIGHTS).rename(d / "weights" / WEIGHTS)
    (d / WEIGHTS).symlink_to(Path("weights") / WEIGHTS)
    loads(d)


def test_hugging_face_cache_snapshot_with_blob_links_loads(sources, sandbox):
    repo = sandbox / "hub" / "models--org--tiny"
    snapshot_dir, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot_dir.mkdir(parents=True)
    blobs.mkdir()
    for i, file in enumerate(sorted(sources.mlx_dir.iterdir())):
        shutil.copy(file, blobs / f"blob{i}")
        (snapshot_dir / file.name).symlink_to(Path("../../blobs") / f"blob{i}")
    loads(snapshot_dir)


def test_pickle_next_to_safetensors_is_ignored_and_never_run(sources, sandbox):
    d = mlx(sources, sandbox)
    (d / "pytorch_model.bin").write_bytes(evil_pickle(sandbox))
    loads(d)
    out = convert_model(str(d), sandbox / "out", F32, progress=False).path
    assert not (out / "pytorch_model.bin").exists()
    assert not (sandbox / "outside" / "pwned").exists()


def test_converted_directory_passes_its_manifest_with_hashes(sources):
    from convert.manifest import check_manifest

    assert check_manifest(sources.mlx_dir, hashes=True)


def test_manifest_hash_mismatch_is_found(sources, sandbox):
    from convert.manifest import MANIFEST, check_manifest

    d = mlx(sources, sandbox, manifest=True)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"]["config.json"]["sha256"] = "0" * 64
    (d / MANIFEST).write_text(json.dumps(manifest))
    assert check_manifest(d)  # sizes still agree
    with pytest.raises(ModelFileError, match="sha256"):
        check_manifest(d, hashes=True)
