from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from convert.errors import ModelFileError
from convert.safetensors_check import (
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    check_safetensors_dir,
    read_safetensors_header,
)

# A valid two-tensor file: a is F32 (2, 3) at bytes 0..24, b is I8 (4,) at 24..28.
GOOD: dict[str, Any] = {
    "__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "I8", "shape": [4], "data_offsets": [24, 28]},
}
DATA = bytes(range(28))
NUMPY_CODES = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64"}
NUMPY_CODES |= {"uint8": "U8", "int8": "I8", "bool": "BOOL", "int32": "I32"}


def pack(
    header: dict[str, Any] | bytes, *, data: bytes = DATA, length: int = -1
) -> bytes:
    """Bytes of a safetensors file; ``length`` overrides the header length field."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length < 0 else length) + body + data


def edit(name: str, **fields: Any) -> dict[str, Any]:
    """A copy of GOOD with some fields of one entry replaced."""
    header = copy.deepcopy(GOOD)
    header[name].update(fields)
    return header


def replace(name: str, value: Any) -> dict[str, Any]:
    return {**GOOD, name: value}


F32_23 = {"dtype": "F32", "shape": [2, 3]}
A_JSON = json.dumps(GOOD["a"])
# (file bytes, a word the problem must contain, whether safetensors 0.8 rejects it too)
BAD = [
    pytest.param(pack(GOOD, data=DATA[:20]), "truncated", True, id="data-cut-short"),
    pytest.param(b"\x10\x00\x00", "too few", True, id="file-under-8-bytes"),
    pytest.param(
        pack(GOOD, length=10_000), "runs past", True, id="header-len-past-eof"
    ),
    pytest.param(pack(GOOD, length=0), "header length", True, id="header-len-0"),
    pytest.param(
        pack(GOOD, length=1 << 63), "header length", True, id="header-len-huge"
    ),
    pytest.param(
        pack(GOOD, length=MAX_HEADER_BYTES + 1),
        "header length",
        True,
        id="header-len-limit",
    ),
    pytest.param(pack(b'{"\xff": 1}', data=b""), "UTF-8", True, id="not-utf8"),
    pytest.param(pack(b'{"a": ', data=b""), "JSON", True, id="invalid-json"),
    pytest.param(pack(b"[]", data=b""), "object", True, id="json-array"),
    pytest.param(
        pack(b'{"__metadata__": {"x": NaN}}', data=b""), "NaN", True, id="nan"
    ),
    pytest.param(
        pack(json.dumps(GOOD).replace("[2, 3]", "[Infinity, 3]").encode()),
        "Infinity",
        True,
        id="infinity",
    ),
    pytest.param(
        pack(f'{{"a": {A_JSON}, "a": {A_JSON}}}'.encode(), data=DATA[:24]),
        "duplicate",
        False,  # serde_json keeps the last value; we refuse to guess
        id="duplicate-keys",
    ),
    pytest.param(
        pack(b"[" * 100_000 + b"]" * 100_000), "JSON", True, id="deep-nesting"
    ),
    pytest.param(pack(edit("a", dtype="Q4_K")), "dtype", True, id="unknown-dtype"),
    pytest.param(pack(edit("a", dtype=["F32"])), "dtype", True, id="dtype-not-str"),
    pytest.param(pack(edit("a", shape=[-2, -3])), "shape", True, id="negative-dim"),
    pytest.param(pack(edit("a", shape=[2.0, 3])), "shape", True, id="float-dim"),
    pytest.param(pack(edit("a", shape=[True, 6])), "shape", True, id="bool-dim"),
    pytest.param(pack(edit("a", shape="2x3")), "shape", True, id="shape-not-list"),
    pytest.param(
        pack(edit("a", shape=[1] * 7 + [2, 3])), "shape", False, id="over-8-dims"
    ),
    pytest.param(
        pack(edit("a", shape=[2, 4])), "is 32 bytes", True, id="size-mismatch"
    ),
    pytest.param(
        pack(edit("b", dtype="F4", shape=[7])), "3.5 bytes", True, id="f4-odd"
    ),
    pytest.param(
        pack(edit("b", shape=[16], data_offsets=[24, 40])),
        "truncated",
        True,
        id="offsets-out-of-bounds",
    ),
    pytest.param(pack(edit("b", data_offsets=[20, 24])), "overlap", True, id="overlap"),
    pytest.param(
        pack(edit("b", **F32_23, data_offsets=[0, 24]), data=DATA[:24]),
        "overlap",
        True,
        id="shared-bytes",
    ),
    pytest.param(
        pack(edit("a", shape=[1 << 62, 1 << 62])), "shape", True, id="overflow-shape"
    ),
    pytest.param(
        pack(edit("a", shape=[1 << 30] * 8)), "bytes", True, id="overflow-product"
    ),
    pytest.param(
        pack(edit("b", shape=[1 << 31, 0], data_offsets=[24, 24]), data=DATA[:24]),
        "shape",
        False,  # the reference reads it; mlx 0.32.4 reads it as shape (-2**31, 0)
        id="dim-over-int32",
    ),
    pytest.param(
        pack(edit("b", shape=[0], data_offsets=[28, 24])),
        "data_offsets",
        True,
        id="offsets-reversed",
    ),
    pytest.param(
        pack(edit("b", data_offsets=[-4, 0])),
        "data_offsets",
        True,
        id="offset-negative",
    ),
    pytest.param(
        pack(edit("b", data_offsets=[24, 28, 32])), "data_offsets", True, id="3-offsets"
    ),
    pytest.param(
        pack(replace("__metadata__", {"format": 1})),
        "__metadata__",
        True,
        id="meta-int",
    ),
    pytest.param(
        pack(replace("__metadata__", "pt")), "__metadata__", True, id="meta-str"
    ),
    pytest.param(
        pack(edit("b", data_offsets=[26, 30]), data=bytes(30)), "hole", True, id="hole"
    ),
    pytest.param(pack(GOOD, data=DATA + bytes(8)), "hole", True, id="trailing-bytes"),
    pytest.param(
        pack(edit("a", extra=1)),
        "exactly",
        False,  # serde ignores unknown fields; we refuse what we do not understand
        id="extra-entry-key",
    ),
    pytest.param(pack(replace("a", 5)), "object", True, id="entry-not-object"),
]


def write(tmp_path: Path, content: bytes, name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_crafted_good_file_passes(tmp_path):
    path = write(tmp_path, pack(GOOD))
    header = read_safetensors_header(path)
    assert header.metadata == {"format": "pt"}
    assert [
        (t.name, t.dtype, t.shape, t.start, t.end) for t in header.tensors.values()
    ] == [
        ("a", "F32", (2, 3), 0, 24),
        ("b", "I8", (4,), 24, 28),
    ]
    assert header.data_offset + 28 == path.stat().st_size


@pytest.mark.parametrize(("content", "word", "reference_rejects"), BAD)
def test_bad_file_is_refused(tmp_path, content, word, reference_rejects):
    path = write(tmp_path, content)
    with pytest.raises(ModelFileError) as err:
        read_safetensors_header(path)
    assert err.value.path == path
    assert str(path) in str(err.value)
    assert word in err.value.problem


@pytest.mark.parametrize(("content", "word", "reference_rejects"), BAD)
def test_reference_library_agrees(tmp_path, content, word, reference_rejects):
    # Every file we refuse, the reference refuses too, except where the table says we
    # are deliberately stricter; that shows our checker is no more permissive.
    path = write(tmp_path, content)
    if reference_rejects:
        with pytest.raises(SafetensorError), safe_open(path, "numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                f.get_tensor(key)
    else:
        with safe_open(path, "numpy") as f:
            assert f.keys()


def check_against_saved(
    header: SafetensorsHeader,
    saved: dict[str, np.ndarray],
    *,
    bf16: tuple[str, ...] = (),
) -> None:
    """Header entries match what was saved, byte for byte; ``bf16`` names hold bits."""
    raw = header.path.read_bytes()
    assert header.tensors.keys() == saved.keys()
    assert max(t.end for t in header.tensors.values()) + header.data_offset == len(raw)
    for name, arr in saved.items():
        entry = header.tensors[name]
        assert entry.shape == arr.shape
        assert entry.dtype == ("BF16" if name in bf16 else NUMPY_CODES[str(arr.dtype)])
        start, end = header.data_offset + entry.start, header.data_offset + entry.end
        assert raw[start:end] == arr.tobytes()


def test_numpy_safetensors_file_passes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((2, 3)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "i": np.arange(4, dtype=np.int64).reshape(2, 2),
        "u": np.arange(7, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(1.5, dtype=np.float64),
    }
    path = tmp_path / "np.safetensors"
    save_file(arrays, str(path), metadata={"format": "np"})
    header = read_safetensors_header(path)
    assert header.metadata == {"format": "np"}
    check_against_saved(header, arrays)


def test_mlx_safetensors_file_passes(tmp_path):
    arrays = {
        "w": mx.arange(6, dtype=mx.float32).reshape(2, 3),
        "bf": mx.arange(8, dtype=mx.bfloat16).reshape(2, 4),
        "mask": mx.array([True, False, True]),
        "ids": mx.arange(5),
    }
    path = tmp_path / "mlx.safetensors"
    mx.save_safetensors(str(path), arrays, metadata={"format": "mlx"})
    header = read_safetensors_header(path)
    assert header.metadata == {"format": "mlx"}
    # numpy has no bfloat16: compare its bits as uint16.
    saved = {
        k: np.array(v.view(mx.uint16) if k == "bf" else v) for k, v in arrays.items()
    }
    check_against_saved(header, saved, bf16=("bf",))


def test_not_a_file_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="not a regular file"):
        read_safetensors_header(tmp_path)


@pytest.fixture
def sharded_dir(tmp_path: Path) -> Path:
    shards = {
        "model-00001-of-00002.safetensors": {"x.weight": np.ones((2, 2), np.float32)},
        "model-00002-of-00002.safetensors": {
            "y.weight": np.ones(3, np.float16),
            "y.bias": np.zeros(3, np.float16),
        },
    }
    weight_map = {}
    for shard, arrays in shards.items():
        save_file(arrays, str(tmp_path / shard))
        weight_map |= dict.fromkeys(arrays, shard)
    index = {"metadata": {"total_size": 28}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tmp_path


def test_sharded_dir_passes(sharded_dir):
    headers = check_safetensors_dir(sharded_dir)
    assert [h.path.name for h in headers] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert set(headers[1].tensors) == {"y.weight", "y.bias"}


def test_single_file_dir_without_index_passes(tmp_path):
    write(tmp_path, pack(GOOD))
    assert [h.path.name for h in check_safetensors_dir(tmp_path)] == [
        "model.safetensors"
    ]


SHARD1 = "model-00001-of-00002.safetensors"
BAD_WEIGHT_MAPS = [
    pytest.param(
        {"x.weight": "model-00003-of-00002.safetensors"}, "not in the", id="shard"
    ),
    pytest.param({"x.weight": f"../{SHARD1}"}, "not in the", id="path-traversal"),
    pytest.param({"y.weight": SHARD1}, "lacks", id="tensor-not-in-shard"),
    pytest.param({"x.weight": None}, "weight_map", id="non-string-file"),
]


@pytest.mark.parametrize(("change", "word"), BAD_WEIGHT_MAPS)
def test_bad_weight_map_is_refused(sharded_dir, change, word):
    index = sharded_dir / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"] |= change
    index.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError) as err:
        check_safetensors_dir(sharded_dir)
    assert err.value.path == index
    assert word in err.value.problem


@pytest.mark.parametrize(
    ("text", "word"),
    [
        pytest.param("{", "JSON", id="invalid-json"),
        pytest.param('{"weight_map": {"x": NaN}}', "NaN", id="nan"),
        pytest.param("[]", "weight_map", id="array"),
        pytest.param('{"metadata": {}}', "weight_map", id="no-weight-map"),
    ],
)
def test_malformed_index_is_refused(sharded_dir, text, word):
    index = sharded_dir / "model.safetensors.index.json"
    index.write_text(text)
    with pytest.raises(ModelFileError) as err:
        check_safetensors_dir(sharded_dir)
    assert (err.value.path, word in err.value.problem) == (index, True)


def test_tensor_missing_from_weight_map_is_refused(sharded_dir):
    index = sharded_dir / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    del doc["weight_map"]["y.bias"]
    index.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="'y.bias', not in weight_map"):
        check_safetensors_dir(sharded_dir)


def test_missing_shard_file_is_refused(sharded_dir):
    (sharded_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model-00002-of-00002.safetensors"):
        check_safetensors_dir(sharded_dir)


def test_corrupt_shard_is_named(sharded_dir):
    shard = sharded_dir / SHARD1
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(ModelFileError) as err:
        check_safetensors_dir(sharded_dir)
    assert err.value.path == shard


def test_dir_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match="no weights") as err:
        check_safetensors_dir(tmp_path)
    assert "--allow-pickle" not in str(err.value)


def test_dir_with_only_pickle_weights_mentions_allow_pickle(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(ModelFileError, match="no weights") as err:
        check_safetensors_dir(tmp_path)
    assert "pytorch_model.bin" in str(err.value)
    assert "--allow-pickle" in str(err.value)


def test_not_a_dir_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="not a directory"):
        check_safetensors_dir(tmp_path / "missing")
