"""Check safetensors headers in pure Python before any native loader reads the file.

mlx 0.32.4's ``mx.load`` accepts overlapping offsets and overflowing shapes (DESIGN.md,
"Files are hostile until checked"). The layout rules mirror ``Metadata::validate`` of
the reference library (huggingface/safetensors); where it is lax we are stricter.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from convert.errors import CORRUPT_FIX, ModelFileError
from convert.json_check import parse_json, show
from convert.triage import PICKLE_SUFFIXES

# Bits per element, as the reference library's Dtype::bitsize(). F6_* are left out:
# safetensors 0.8.0's Python binding does not understand them.
DTYPE_BITS = MappingProxyType(
    {"BOOL": 8, "F4": 4, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8}
    | {"I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32}
    | {"C64": 64, "F64": 64, "I64": 64, "U64": 64}
)
# What mlx 0.32.4's mx.load reads (F8_* as raw uint8); it raises on the rest.
MLX_DTYPES = frozenset(DTYPE_BITS) - {"F4", "F8_E5M2", "F64"}
MAX_HEADER_BYTES = 100_000_000  # the reference library's MAX_HEADER_SIZE
MAX_TENSORS = 1_000_000
MAX_DIMS = 8
# MLX holds each dimension in an int32: mlx 0.32.4's mx.load silently reads a
# [2**31, 0] tensor as shape (-2147483648, 0).
MAX_DIM = 1 << 31
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
INDEX_NAME = "model.safetensors.index.json"
INDEX_FIX = "The index does not match the shards; download or convert the model again"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header; offsets are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header: every tensor fits and the data is fully covered."""

    path: Path
    header_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]

    @property
    def data_offset(self) -> int:
        """Absolute file offset of the data section (8 + ``header_size``)."""
        return 8 + self.header_size


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check the header of one ``.safetensors`` file; tensor data is not read.

    Args:
        path: The ``.safetensors`` file.

    Returns:
        The parsed header; ``tensors`` is keyed by name, in header order.

    Raises:
        ModelFileError: The file is not a regular file, or its header is malformed,
            names an unknown dtype, or its offsets overlap, leave holes, overflow
            or run past the end of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "not a regular file", "Pass a .safetensors file")
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise _corrupt(path, f"file has {size} bytes, too few for a header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if not 1 < n <= MAX_HEADER_BYTES:
            raise _corrupt(path, f"header length {n} is not in 2..{MAX_HEADER_BYTES}")
        if 8 + n > size:
            raise _corrupt(path, f"header length {n} runs past the {size}-byte file")
        raw = f.read(n)
    header = parse_json(path, raw, what="header")
    if not isinstance(header, dict):
        raise _corrupt(path, f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not _is_str_map(metadata):
        raise _corrupt(path, "__metadata__ is not an object of string values")
    if len(header) > MAX_TENSORS:
        raise _corrupt(path, f"header lists {len(header)} tensors, over {MAX_TENSORS}")
    data_size = size - 8 - n
    tensors = {k: _to_entry(path, k, v, data_size) for k, v in header.items()}
    _check_layout(path, tensors.values(), data_size)
    return SafetensorsHeader(path, n, metadata, tensors)


def check_safetensors_dir(path: str | os.PathLike[str]) -> list[SafetensorsHeader]:
    """Check every ``*.safetensors`` file of a model directory, and its shard index.

    Args:
        path: The model directory.

    Returns:
        The headers of its ``*.safetensors`` files, sorted by file name.

    Raises:
        ModelFileError: The directory holds no ``*.safetensors`` file, a file fails
            ``read_safetensors_header``, holds a dtype MLX cannot load, two files
            hold a tensor of the same name, or ``model.safetensors.index.json`` is
            malformed, names a missing shard, or disagrees with a shard's tensors.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(path, "not a directory", "Pass a model directory")
    files = sorted(path.glob("*.safetensors"))  # each must be a regular file
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        fix = "Download or convert the model's weights into this directory"
        if pickles:
            fix = (
                f"It has pickle checkpoints ({', '.join(pickles[:3])}); convert them "
                "to safetensors, or pass --allow-pickle if you trust their source"
            )
        raise ModelFileError(path, "no weights found (no *.safetensors files)", fix)
    headers = [read_safetensors_header(p) for p in files]
    for header in headers:
        if odd := [t for t in header.tensors.values() if t.dtype not in MLX_DTYPES]:
            raise ModelFileError(
                header.path,
                f"tensor {show(odd[0].name)} is {odd[0].dtype}, which MLX cannot load",
                "Convert the weights to float32, float16 or bfloat16",
            )
    _check_unique_names(headers)
    index = path / INDEX_NAME
    if index.exists():
        _check_index(index, {h.path.name: h for h in headers})
    return headers


def _corrupt(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(path, problem, CORRUPT_FIX)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_count(value: Any, limit: float = math.inf) -> bool:
    """Is ``value`` a JSON integer (not a bool) in [0, limit)?"""
    return type(value) is int and 0 <= value < limit


def _to_entry(path: Path, name: str, value: Any, data_size: int) -> TensorEntry:
    def fail(problem: str) -> ModelFileError:
        return _corrupt(path, f"tensor {show(name)}: {problem}")

    if not isinstance(value, dict) or value.keys() != ENTRY_KEYS:
        raise fail("entry is not an object with exactly dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise fail(f"unknown dtype {show(dtype)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise fail(f"shape {show(shape)} is not a list of up to {MAX_DIMS} numbers")
    if not all(_is_count(d, MAX_DIM) for d in shape):
        raise fail(f"shape {show(shape)} has a dimension not an integer in [0, 2**31)")
    pair = isinstance(offsets, list) and len(offsets) == 2
    start, end = offsets if pair else (-1, -1)
    if not (_is_count(start) and _is_count(end) and start <= end):
        raise fail(f"data_offsets {show(offsets)} are not [start, end], start <= end")
    bits = math.prod(shape) * DTYPE_BITS[dtype]  # Python ints: no overflow
    if bits % 8 or bits // 8 != end - start:
        raise fail(f"{dtype} {show(shape)} is {bits / 8:g} bytes, not {end - start}")
    if end > data_size:
        raise fail(f"ends at byte {end}, past the {data_size}-byte data (truncated)")
    return TensorEntry(name, dtype, tuple(shape), start, end)


def _check_layout(path: Path, tensors: Iterable[TensorEntry], data_size: int) -> None:
    """Tensors must tile the data section exactly: no overlaps, holes or trailing bytes.

    The reference library rejects holes and trailing bytes too (InvalidOffset,
    MetadataIncompleteBuffer), so any file it accepts passes here.
    """
    cursor, previous = 0, None
    for t in sorted(tensors, key=lambda t: (t.start, t.end)):
        if t.start < cursor:
            raise _corrupt(path, f"tensor {show(t.name)} overlaps {show(previous)}")
        if t.start > cursor:
            raise _corrupt(path, f"a hole at bytes {cursor}..{t.start} of the data")
        cursor, previous = t.end, t.name
    if cursor != data_size:
        raise _corrupt(path, f"a hole at bytes {cursor}..{data_size} after the tensors")


def _check_unique_names(headers: list[SafetensorsHeader]) -> None:
    """A tensor in two shards would load as whichever shard the glob lists last."""
    owner: dict[str, Path] = {}
    for header in headers:
        for name in header.tensors:
            if (first := owner.setdefault(name, header.path)) != header.path:
                raise ModelFileError(
                    header.path,
                    f"tensor {show(name)} is also in {first.name}",
                    INDEX_FIX,
                )


def _check_index(index: Path, headers: dict[str, SafetensorsHeader]) -> None:
    """weight_map must name present shards and list exactly the tensors of each."""
    fail = functools.partial(ModelFileError, index, fix=INDEX_FIX)
    if index.stat().st_size > MAX_HEADER_BYTES:
        raise fail(f"index is over {MAX_HEADER_BYTES} bytes")
    doc = parse_json(index, index.read_bytes(), what="index")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not _is_str_map(weight_map):
        raise fail("weight_map is missing or not an object of tensor -> file name")
    expected: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        expected.setdefault(shard, set()).add(tensor)
    for shard, names in sorted(expected.items()):
        # Only bare names of files found in the directory match, so "../x" never does.
        header = headers.get(shard)
        if header is None:
            raise fail(f"weight_map names {show(shard)}, not in the directory")
        if missing := sorted(names - header.tensors.keys()):
            raise fail(f"{show(shard)} lacks {show(missing[0])}, listed in weight_map")
        if extra := sorted(header.tensors.keys() - names):
            raise fail(f"{show(shard)} holds {show(extra[0])}, not in weight_map")
