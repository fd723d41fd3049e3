"""Resolving what the user names: files, directories, catalog names, hub repo ids."""

from __future__ import annotations

import pytest

from convert.errors import ModelFileError
from convert.source import resolve_source
from tests.tiny_gguf import write_tiny_gguf


def test_gguf_file_and_directory_holding_one(tmp_path):
    write_tiny_gguf(tmp_path / "m.gguf")
    assert resolve_source(str(tmp_path / "m.gguf")).kind == "gguf"
    found = resolve_source(str(tmp_path))
    assert (found.kind, found.path.name) == ("gguf", "m.gguf")


def test_model_directory_is_hf_kind(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)).kind == "hf"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("weights.bin", b"\x80\x02pickle", "pickle checkpoint"),
        ("model.pth", b"PK\x03\x04", "pickle checkpoint"),
        ("notes.gguf", b"hello world", "is not a GGUF file"),
    ],
)
def test_files_that_are_not_gguf_are_refused(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ModelFileError, match=message):
        resolve_source(str(tmp_path / name))


def test_unknown_name_lists_catalog():
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        resolve_source("definitely not a model")


def test_repo_id_without_network_says_what_to_do():
    # These machines reach no model hub, which is exactly the offline case users hit.
    with pytest.raises(ConnectionError, match="local directory, a .gguf file"):
        resolve_source("silica-test-org/no-such-model")
