"""Measurements of this machine, taken once and cached per MLX version, device and BLAS.

Speed decisions (which format to compute in, how many rows a verify may take) rest on
how fast this machine runs a few matrix products. Measuring takes a second or two, so
each table is measured the first time it is needed and kept in a JSON file in the
cache directory, keyed by what would change the answer. Runs on the engine worker
thread (measuring touches MLX).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from engine import fast_blas

log = logging.getLogger(__name__)


def measured(
    cache_dir: Path,
    name: str,
    measure: Callable[[], Any],
    *,
    detail: str = "",
    valid: Callable[[Any], bool] = lambda value: value is not None,
) -> Any:
    """The cached result of ``measure()`` in ``cache_dir/<name>.json``, measuring once.

    The file maps a key (MLX version, device type, BLAS in use, then ``detail``,
    e.g. which model was measured) to a result, so one cache directory serves several
    MLX installs and models. An unreadable file, or an entry ``valid`` refuses (an
    edited or older file), is measured again; an unwritable directory measures every
    time rather than failing.
    """
    key = f"{mx.__version__}-{mx.default_device().type.name}-{fast_blas.in_use()}"
    key += f"-{detail}" if detail else ""
    path = cache_dir / f"{name}.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    if valid(table.get(key)):
        return table[key]
    table[key] = result = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(table, indent=1))
        staging.replace(path)
    except OSError as e:  # a read-only cache still answers this process
        log.warning("Could not cache %s (%s); it will be measured again.", path, e)
    return result
