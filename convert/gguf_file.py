"""Read GGUF headers and tensor bytes in pure Python, checking every count and offset.

Native loaders abort the process on crafted headers (see DESIGN.md, "Files are hostile
until checked"), so nothing but this module parses a GGUF file before it is validated.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from convert.errors import CORRUPT_FIX, ModelFileError
from convert.json_check import show

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KV_COUNT = 100_000
MAX_TENSOR_COUNT = 100_000
MAX_KEY_BYTES = 65_536
MAX_STRING_BYTES = 64 << 20
MAX_ARRAY_LENGTH = 1 << 26
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DIM = 1 << 31  # MLX holds each dimension in an int32
# The fewest bytes a tensor info (name length, one dimension, type, offset) and a
# metadata entry (key length, type, a one-byte value) can take.
MIN_TENSOR_INFO, MIN_KV = 8 + 4 + 8 + 4 + 8, 8 + 4 + 1

# GGUF metadata value types: code -> struct format (None for string and array).
SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file.

    Attributes:
        name: GGUF tensor name, e.g. ``blk.0.attn_q.weight``.
        shape: numpy order (slowest dimension first); GGUF stores the reverse.
        ggml_type: the block format of the bytes.
        offset: absolute byte offset in the file.
        nbytes: byte length of the tensor data.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int
    nbytes: int


class _Cursor:
    """Reads little-endian values from a buffer, refusing to read past its end."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise ModelFileError(
                self.path,
                f"{what} at byte {start} runs past the end of the file",
                CORRUPT_FIX,
            )
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, limit: int, what: str) -> str:
        length = self.unpack("<Q", what)
        if length > limit:
            raise ModelFileError(
                self.path, f"{what} claims {length} bytes (limit {limit})", CORRUPT_FIX
            )
        start = self.take(length, what)
        try:
            return bytes(self.buf[start : start + length]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFileError(
                self.path, f"{what} is not UTF-8 ({e})", CORRUPT_FIX
            ) from e


def _read_value(cur: _Cursor, value_type: int, key: str) -> Any:
    if value_type in SCALAR_FORMATS:
        return cur.unpack(SCALAR_FORMATS[value_type], f"value of {key!r}")
    if value_type == STRING:
        return cur.string(MAX_STRING_BYTES, f"string value of {key!r}")
    if value_type == ARRAY:
        item_type = cur.unpack("<I", f"array type of {key!r}")
        length = cur.unpack("<Q", f"array length of {key!r}")
        if length > MAX_ARRAY_LENGTH:
            raise ModelFileError(
                cur.path, f"array {key!r} claims {length} items", CORRUPT_FIX
            )
        if item_type == ARRAY:
            raise ModelFileError(cur.path, f"array {key!r} nests arrays", CORRUPT_FIX)
        if item_type in SCALAR_FORMATS:
            fmt = SCALAR_FORMATS[item_type]
            start = cur.take(length * struct.calcsize(fmt), f"array {key!r}")
            return list(struct.unpack_from(f"<{length}{fmt[1]}", cur.buf, start))
        return [_read_value(cur, item_type, key) for _ in range(length)]
    raise ModelFileError(
        cur.path, f"metadata {key!r} has unknown value type {value_type}", CORRUPT_FIX
    )


def _read_tensor_info(
    cur: _Cursor, index: int
) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(MAX_KEY_BYTES, f"name of tensor #{index}")
    n_dims = cur.unpack("<I", f"dimension count of {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ModelFileError(
            cur.path, f"tensor {name!r} has {n_dims} dimensions", CORRUPT_FIX
        )
    dims = tuple(cur.unpack("<Q", f"dimensions of {name!r}") for _ in range(n_dims))
    if any(not 1 <= d < MAX_DIM for d in dims):
        raise ModelFileError(
            cur.path, f"tensor {name!r} has dimensions {dims}", CORRUPT_FIX
        )
    ggml_type = cur.unpack("<I", f"type of {name!r}")
    offset = cur.unpack("<Q", f"offset of {name!r}")
    return name, tuple(reversed(dims)), ggml_type, offset


def _tensor(path: Path, info: tuple, data_start: int, alignment: int) -> GGUFTensor:
    name, shape, type_code, rel_offset = info
    try:
        ggml_type = GGMLQuantizationType(type_code)
        block, type_size = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError) as e:
        raise ModelFileError(
            path,
            f"tensor {name!r} has unknown GGML type {type_code}",
            "Update Silica's gguf package, or re-export the file with a common type",
        ) from e
    if shape[-1] % block:
        raise ModelFileError(
            path,
            f"tensor {name!r} row of {shape[-1]} is not a multiple of {block}",
            CORRUPT_FIX,
        )
    if rel_offset % alignment:
        raise ModelFileError(
            path,
            f"tensor {name!r} offset {rel_offset} is not {alignment}-aligned",
            CORRUPT_FIX,
        )
    elements = int(np.prod(shape, dtype=object))
    return GGUFTensor(
        name, shape, ggml_type, data_start + rel_offset, elements // block * type_size
    )


def _check_layout(
    path: Path, tensors: list[GGUFTensor], file_size: int, data_start: int, align: int
) -> None:
    """Tensors must follow each other with only alignment padding between them.

    llama.cpp and gguf-py pack tensor data this way; a gap (or trailing bytes) means
    a tensor's type or shape was changed to one that holds fewer bytes, so part of
    the data would be read as nothing.
    """
    for t in tensors:
        if t.offset + t.nbytes > file_size:
            raise ModelFileError(
                path,
                f"tensor {show(t.name)} ends at byte {t.offset + t.nbytes}, "
                f"past the end of the file ({file_size} bytes)",
                CORRUPT_FIX,
            )
    end_prev, name_prev = data_start, ""
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.offset < end_prev:
            raise ModelFileError(
                path,
                f"tensors {show(name_prev)} and {show(t.name)} overlap",
                CORRUPT_FIX,
            )
        if t.offset >= end_prev + align:
            raise ModelFileError(
                path,
                f"bytes {end_prev}..{t.offset} before tensor {show(t.name)} belong "
                "to no tensor",
                CORRUPT_FIX,
            )
        end_prev, name_prev = t.offset + t.nbytes, t.name
    if tensors and file_size >= end_prev + align:
        raise ModelFileError(
            path,
            f"bytes {end_prev}..{file_size} after the last tensor belong to no tensor",
            CORRUPT_FIX,
        )


class GGUFFile:
    """A validated GGUF file: metadata, tensor table and access to tensor bytes.

    Use as a context manager: the file stays memory-mapped until it is closed.

    Raises:
        ModelFileError: The file is not GGUF, or its header is truncated, corrupt or
            outside the bounds this reader accepts.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = self.path.stat().st_size
            if size < 24:
                raise ModelFileError(
                    self.path, f"only {size} bytes, too short for GGUF", CORRUPT_FIX
                )
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.metadata, self.tensors = self._parse(size)
        except BaseException:
            self._map.close()
            raise

    def _parse(self, size: int) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
        cur = _Cursor(self._map, self.path)
        if bytes(self._map[:4]) != GGUF_MAGIC:
            raise ModelFileError(
                self.path,
                "does not start with the GGUF magic bytes",
                "Is it a GGUF file?",
            )
        cur.take(4, "magic")
        version = cur.unpack("<I", "version")
        if version not in GGUF_VERSIONS:
            raise ModelFileError(
                self.path, f"GGUF version {version} is not supported (2 or 3)"
            )
        n_tensors, n_kv = (
            cur.unpack("<Q", "tensor count"),
            cur.unpack("<Q", "metadata count"),
        )
        if n_tensors > MAX_TENSOR_COUNT or n_kv > MAX_KV_COUNT:
            raise ModelFileError(
                self.path,
                f"claims {n_tensors} tensors and {n_kv} metadata keys",
                CORRUPT_FIX,
            )
        if 24 + n_tensors * MIN_TENSOR_INFO + n_kv * MIN_KV > size:
            raise ModelFileError(
                self.path,
                f"claims {n_tensors} tensors and {n_kv} metadata keys, more than "
                f"its {size} bytes can describe",
                CORRUPT_FIX,
            )
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(MAX_KEY_BYTES, f"metadata key #{i}")
            if key in metadata:
                raise ModelFileError(
                    self.path, f"metadata key {key!r} appears twice", CORRUPT_FIX
                )
            metadata[key] = _read_value(cur, cur.unpack("<I", f"type of {key!r}"), key)
        infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or not 1 <= alignment <= 1 << 16:
            raise ModelFileError(
                self.path, f"general.alignment is {alignment!r}", CORRUPT_FIX
            )
        data_start = -(-cur.pos // alignment) * alignment
        tensors = [_tensor(self.path, info, data_start, alignment) for info in infos]
        if len({t.name for t in tensors}) != len(tensors):
            raise ModelFileError(self.path, "two tensors share a name", CORRUPT_FIX)
        _check_layout(self.path, tensors, size, data_start, alignment)
        return metadata, {t.name: t for t in tensors}

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 array of shape (rows..., bytes per row).

        A copy, so the file can be closed while arrays made from it live on.
        """
        t = self.tensors[name]
        data = np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        return data.reshape(*t.shape[:-1], -1).copy()

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(self.path, "has no general.architecture", CORRUPT_FIX)
        return arch

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
