"""Strict, bounded JSON for model files: UTF-8, no NaN/Infinity, no duplicate keys.

Python's ``json`` accepts NaN and Infinity and keeps the last of duplicate keys; a
hostile config.json or safetensors header can use either to mean two things at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from convert.errors import CORRUPT_FIX, ModelFileError

MAX_JSON_BYTES = 256 << 20  # tokenizer.json of a 256k vocabulary is ~35 MB


def parse_json(path: Path, raw: bytes, *, what: str) -> Any:
    """Decode strict UTF-8 JSON from ``raw``, read from ``path``.

    Raises:
        ModelFileError: ``raw`` is not UTF-8, not JSON, uses NaN/Infinity, repeats
            a key or nests too deeply; the message names ``path`` and ``what``.
    """
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError as e:
        raise ModelFileError(
            path, f"{what} is not valid UTF-8 (byte {e.start})", CORRUPT_FIX
        ) from e
    except (ValueError, RecursionError) as e:
        raise ModelFileError(
            path, f"{what} is not valid JSON ({e})", CORRUPT_FIX
        ) from e


def read_json(path: Path, *, limit: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file of at most ``limit`` bytes strictly (see ``parse_json``).

    Raises:
        ModelFileError: The file is not a regular file, is over ``limit`` bytes or
            is not strict JSON.
    """
    if not path.is_file():
        raise ModelFileError(path, "is not a regular file")
    with path.open("rb") as f:
        raw = f.read(limit + 1)  # not stat(): the file may grow after it
    if len(raw) > limit:
        raise ModelFileError(
            path, f"is over the {limit}-byte limit for a JSON file", CORRUPT_FIX
        )
    return parse_json(path, raw, what=path.name)


def show(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters: hostile names and shapes can be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {show(key)}")
        obj[key] = value
    return obj
