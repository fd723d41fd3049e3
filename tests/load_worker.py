"""Load the model files named on stdin; answer each request with one JSON line.

tests/test_fuzz_load.py runs this in a subprocess, so that a native crash or a hang in
a loader fails a test instead of killing pytest. A request is ``{"dir": path}`` (load a
model directory with ``load_checked``) or ``{"gguf": path, "out": dir}`` (convert a
GGUF file into ``out`` with ``convert_model``, then load that). The answer is
``{"params": {name: [shape, dtype, sha256 of the bytes]}}`` after every parameter was
evaluated, or ``{"error": class name, "message": text}``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from convert import ConvertOptions, ModelFileError, convert_model, load_checked


def load(request: dict) -> dict:
    if "gguf" in request:
        options = ConvertOptions(dtype="float32", force=True)
        out = Path(request["out"])
        path = convert_model(request["gguf"], out, options, progress=False).path
    else:
        path = Path(request["dir"])
    model, _, _ = load_checked(path)
    params = tree_flatten(model.parameters())
    mx.eval([v for _, v in params])
    return {
        "params": {
            name: [list(v.shape), str(v.dtype).split(".")[-1], digest(v)]
            for name, v in params
        }
    }


def digest(array: mx.array) -> str:
    return hashlib.sha256(memoryview(array).tobytes()).hexdigest()


def main() -> None:
    for line in sys.stdin:
        try:
            answer = load(json.loads(line))
        except ModelFileError as e:
            answer = {"error": "ModelFileError", "message": str(e)}
        except Exception as e:  # reported to the test, which fails on it
            answer = {"error": type(e).__name__, "message": traceback.format_exc()}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
