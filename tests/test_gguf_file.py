from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from convert.errors import ModelFileError
from convert.gguf_blocks import blocks_to_mlx, decode, dequantize_mlx
from convert.gguf_file import GGUFFile

T = gguf.GGMLQuantizationType
# (name, numpy shape, type): a 1-D norm, a 3-D F32, and one tensor per block format.
TENSORS = [
    ("norm.weight", (24,), T.F32),
    ("cube.weight", (2, 3, 32), T.F32),
    ("blk.0.f16.weight", (4, 64), T.F16),
    ("blk.0.q8.weight", (8, 64), T.Q8_0),
    ("blk.0.q4.weight", (4, 96), T.Q4_0),
]
METADATA = {
    "test.u32": 7,
    "test.i16": -3,
    "test.f32": 0.5,
    "test.flag": True,
    "test.str": "héllo",
    "test.ints": [1, -2, 3],
    "test.words": ["a", "bc", ""],
}
# Bytes of each scalar GGUF value type, by type code (8 is string, 9 is array).
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
MAX_SECONDS = 0.5


def write_gguf(path: Path) -> None:
    w, rng = gguf.GGUFWriter(path, "llama"), np.random.default_rng(0)
    w.add_uint32("test.u32", METADATA["test.u32"])
    w.add_int16("test.i16", METADATA["test.i16"])
    w.add_float32("test.f32", METADATA["test.f32"])
    w.add_bool("test.flag", METADATA["test.flag"])
    w.add_string("test.str", METADATA["test.str"])
    w.add_array("test.ints", METADATA["test.ints"])
    w.add_array("test.words", METADATA["test.words"])
    w.add_uint32("general.alignment", 32)
    for name, shape, ggml_type in TENSORS:
        values = rng.standard_normal(shape).astype(np.float32)
        if ggml_type == T.F32:
            w.add_tensor(name, values)
        else:
            w.add_tensor(name, quantize(values, ggml_type), raw_dtype=ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def layout(data: bytes) -> dict[str, int]:
    """Byte offsets of the fields of a GGUF file, parsed independently of GGUFFile.

    ``key`` is its length field, ``key.type`` and ``key.value`` follow; an array's
    length is at ``key.value + 4``. ``name.ndims``, ``name.dims``, ``name.type`` and
    ``name.offset`` are a tensor's info fields; ``data`` is where tensor data starts.
    """
    at: dict[str, int] = {}
    pos = 24

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> tuple[str, int]:
        nonlocal pos
        start, n = pos, take("<Q")
        pos += n
        return data[pos - n : pos].decode(), start

    def skip(value_type: int) -> None:
        nonlocal pos
        if value_type == 8:
            # Not `pos += take(...)`: that reads pos before take moves it.
            n = take("<Q")
            pos += n
        elif value_type == 9:
            item_type, n = take("<I"), take("<Q")
            for _ in range(n):
                skip(item_type)
        else:
            pos += SCALAR_SIZES[value_type]

    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    for _ in range(n_kv):
        key, at_key = text()
        at[key] = at_key
        at[f"{key}.type"] = pos
        value_type = take("<I")
        at[f"{key}.value"] = pos
        skip(value_type)
    for _ in range(n_tensors):
        name, at_name = text()
        at[name] = at_name
        at[f"{name}.ndims"] = pos
        n_dims = take("<I")
        at[f"{name}.dims"] = pos
        pos += 8 * n_dims
        at[f"{name}.type"], at[f"{name}.offset"] = pos, pos + 4
        pos += 12
    at["data"] = -(-pos // 32) * 32
    return at


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, dict]:
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    write_gguf(path)
    data = path.read_bytes()
    return path, data, layout(data)


def put(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, pos, value)
    return bytes(patched)


def test_valid_file_matches_what_was_written_and_gguf_reader(good):
    path, _, at = good
    reader = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.architecture == "llama"
        for key, value in METADATA.items():
            assert f.metadata[key] == value, key
        assert f.metadata["general.alignment"] == 32
        assert list(f.tensors) == [name for name, _, _ in TENSORS]
        raws = {}
        for (name, shape, ggml_type), ref in zip(TENSORS, reader.tensors, strict=True):
            t = f.tensors[name]
            assert (t.name, t.shape, t.ggml_type) == (name, shape, ggml_type)
            assert (t.offset, t.nbytes) == (ref.data_offset, ref.n_bytes)
            assert t.offset >= at["data"] and t.offset % 32 == 0
            raws[name] = f.raw(name)
            assert raws[name].shape[:-1] == shape[:-1]
            assert raws[name].tobytes() == np.asarray(ref.data).tobytes()
    # The arrays are copies: they outlive the closed map.
    for name, shape, ggml_type in TENSORS:
        assert decode(raws[name], ggml_type, shape).shape == shape


def test_missing_architecture_is_reported(good, tmp_path):
    _, data, at = good
    key = at["general.architecture"] + 8
    path = tmp_path / "noarch.gguf"
    path.write_bytes(data[:key] + b"X" + data[key + 1 :])
    with GGUFFile(path) as f, pytest.raises(ModelFileError, match="architecture"):
        _ = f.architecture


Patch = Callable[[bytes, dict], bytes]
Q8, Q4 = "blk.0.q8.weight", "blk.0.q4.weight"
BIG = 1 << 63


def setting(field: str, fmt: str, value: int, *, skip: int = 0) -> Patch:
    """A patch that writes ``value`` at the layout field ``field`` (plus ``skip``)."""
    return lambda d, at: put(d, at[field] + skip, fmt, value)


def renaming(key: str, new: bytes) -> Patch:
    """A patch that overwrites the first bytes of a metadata key's name."""
    return lambda d, at: d[: at[key] + 8] + new + d[at[key] + 8 + len(new) :]


HOSTILE: list[tuple[str, Patch, str]] = [
    ("bad-magic", lambda d, at: b"GGUX" + d[4:], "magic"),
    ("version-1", lambda d, at: put(d, 4, "<I", 1), "version"),
    ("version-99", lambda d, at: put(d, 4, "<I", 99), "version"),
    ("under-24-bytes", lambda d, at: d[:20], "too short"),
    # A file this short cannot hold 9 metadata entries and 5 tensor infos.
    ("cut-in-metadata", lambda d, at: d[: at["test.str.value"] + 3], "can describe"),
    ("tensor-count-5000", lambda d, at: put(d, 8, "<Q", 5000), "can describe"),
    ("cut-in-tensor-info", lambda d, at: d[: at[f"{Q8}.dims"] + 5], "past the end"),
    # The writer pads the end to 32 bytes; cut past the padding into the last tensor.
    ("cut-in-tensor-data", lambda d, at: d[:-40], "past the end"),
    ("tensor-count-2^63", lambda d, at: put(d, 8, "<Q", BIG), "tensors"),
    ("kv-count-2^63", lambda d, at: put(d, 16, "<Q", BIG), "metadata keys"),
    ("key-length-2^63", setting("test.u32", "<Q", BIG), "claims"),
    ("string-length-2^63", setting("test.str.value", "<Q", BIG), "claims"),
    ("str-array-length-2^63", setting("test.words.value", "<Q", BIG, skip=4), "items"),
    # gguf 0.19's GGUFReader loops for minutes on these two.
    ("int-array-length-2^63", setting("test.ints.value", "<Q", BIG, skip=4), "items"),
    (
        "int-array-length-2^26",
        setting("test.ints.value", "<Q", 1 << 26, skip=4),
        "past the end",
    ),
    ("tensor-name-length-2^63", setting(Q4, "<Q", BIG), "claims"),
    ("ndims-0", setting(f"{Q8}.ndims", "<I", 0), "dimensions"),
    ("ndims-100", setting(f"{Q8}.ndims", "<I", 100), "dimensions"),
    ("dim-0", setting(f"{Q8}.dims", "<Q", 0), "dimensions"),
    ("dim-2^62", setting(f"{Q8}.dims", "<Q", 1 << 62), "dimensions"),
    ("ggml-type-9999", setting(f"{Q8}.type", "<I", 9999), "unknown GGML type"),
    ("row-not-whole-blocks", setting("norm.weight.type", "<I", T.Q8_0), "multiple"),
    ("offset-misaligned", setting(f"{Q4}.offset", "<Q", 1), "aligned"),
    ("offset-past-end", setting(f"{Q4}.offset", "<Q", 1 << 40), "past the end"),
    ("offset-near-2^64", setting(f"{Q4}.offset", "<Q", 2**64 - 32), "past the end"),
    ("tensors-overlap", setting("cube.weight.offset", "<Q", 0), "overlap"),
    # Q8_0 -> Q4_0 halves the tensor: the rest of its bytes would be read as nothing.
    ("type-shrinks-tensor", setting(f"{Q8}.type", "<I", T.Q4_0), "belong to no"),
    ("trailing-bytes", lambda d, at: d + bytes(64), "after the last tensor"),
    ("duplicate-key", renaming("test.f32", b"test.u32"), "twice"),
    ("key-not-utf8", renaming("test.str", b"\xff"), "UTF-8"),
    ("value-type-99", setting("test.u32.type", "<I", 99), "unknown value type"),
    ("array-item-type-99", setting("test.ints.value", "<I", 99), "unknown value type"),
    ("alignment-0", setting("general.alignment.value", "<I", 0), "alignment"),
]


@pytest.mark.parametrize(
    ("patch", "keyword"), [pytest.param(p, k, id=i) for i, p, k in HOSTILE]
)
def test_hostile_file_is_refused_fast(good, tmp_path, patch, keyword):
    _, data, at = good
    path = tmp_path / "hostile-model.gguf"
    path.write_bytes(patch(data, at))
    start = time.monotonic()
    with pytest.raises(ModelFileError) as info:
        GGUFFile(path)
    assert time.monotonic() - start < MAX_SECONDS
    assert path.name in str(info.value)
    assert keyword.lower() in str(info.value).lower()


INTERESTING_U64 = [0, 1, 31, 32, 33, 255, 1 << 31, 1 << 32, 1 << 62, 1 << 63]
INTERESTING_U64 += [(1 << 64) - 1, (1 << 64) - 32]


@st.composite
def mutations(draw: st.DrawFn, header_end: int, size: int) -> list[tuple]:
    """Up to four byte or u32/u64 overwrites in the header, or one truncation."""
    if draw(st.booleans()):
        return [("cut", draw(st.integers(0, size - 1)), 0)]
    edit = st.one_of(
        st.tuples(st.just("<B"), st.integers(0, header_end - 1), st.integers(0, 255)),
        st.tuples(
            st.sampled_from(["<I", "<Q"]),
            st.integers(0, header_end - 8),
            st.sampled_from(INTERESTING_U64),
        ),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_file_is_refused_or_consistent(good, tmp_path_factory, data):
    _, original, at = good
    mutated = original
    for fmt, pos, value in data.draw(mutations(at["data"], len(original))):
        if fmt == "cut":
            mutated = mutated[:pos]
        else:
            mutated = put(
                mutated, pos, fmt, value & ((1 << 8 * struct.calcsize(fmt)) - 1)
            )
    path = tmp_path_factory.getbasetemp() / "fuzz.gguf"
    path.write_bytes(mutated)
    start = time.monotonic()
    try:
        f = GGUFFile(path)
    except ModelFileError as e:
        assert path.name in str(e)
        f = None
    assert time.monotonic() - start < MAX_SECONDS
    if f is None:
        return
    with f:
        end = 0
        for t in sorted(f.tensors.values(), key=lambda t: t.offset):
            assert end <= t.offset and t.offset + t.nbytes <= len(mutated), t
            end = t.offset + t.nbytes
            assert f.raw(t.name).nbytes == t.nbytes


NATIVE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def awkward_matrix() -> np.ndarray:
    """16 x 256 float32: a row of zeros, a row scaled 1e-6..1e4, the rest normal."""
    w = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)
    w[0] = 0.0
    w[1] *= np.logspace(-6, 4, 256, dtype=np.float32)
    return w


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("ggml_type", NATIVE, ids=[t.name for t in NATIVE])
def test_blocks_to_mlx_is_bit_exact(ggml_type, dtype):
    raw = quantize(awkward_matrix(), ggml_type)
    q = blocks_to_mlx(raw, ggml_type, dtype)
    assert q.scales.dtype == dtype and q.group_size == 32
    ours = np.array(dequantize_mlx(q))
    ref = dequantize(raw, ggml_type)
    assert ours.shape == ref.shape == (16, 256)
    assert np.array_equal(ours, ref)


# F32/F16 are viewed directly; the rest are types MLX cannot hold as blocks.
DECODED = [T.F32, T.F16, T.BF16, T.TQ2_0, T.MXFP4]


@pytest.mark.parametrize("ggml_type", DECODED, ids=[t.name for t in DECODED])
def test_decode_matches_gguf_dequantize(ggml_type):
    w = awkward_matrix().reshape(4, 4, 256)
    raw = np.ascontiguousarray(quantize(w, ggml_type)).view(np.uint8)
    raw = raw.reshape(4, 4, -1)  # (rows..., bytes per row), as GGUFFile.raw gives
    ours = decode(raw, ggml_type, w.shape)
    assert ours.dtype == mx.float32 and ours.shape == w.shape
    assert np.array_equal(np.array(ours), dequantize(raw, ggml_type).reshape(w.shape))


def test_q4_k_blocks_repack_exactly():
    """Q4_K has no quantizer in gguf-py, so random blocks with sane scales stand in."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, size=(6, 3, 144), dtype=np.uint8)
    for at in (0, 2):  # d and dmin, float16
        halves = rng.normal(0, 0.02, size=(6, 3)).astype(np.float16)
        blocks[..., at : at + 2] = halves[..., None].view(np.uint8)
    raw = blocks.reshape(6, -1)
    reference = gguf.quants.dequantize(raw, T.Q4_K)
    exact = dequantize_mlx(blocks_to_mlx(raw, T.Q4_K, mx.float32))
    assert np.array_equal(np.array(exact), reference)
    halfs = dequantize_mlx(blocks_to_mlx(raw, T.Q4_K, mx.float16))
    # float16 rounds the 17-bit group scales: close, relative to the tensor's range
    assert np.abs(np.array(halfs) - reference).max() <= 2e-3 * np.abs(reference).max()
