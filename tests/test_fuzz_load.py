"""Mutated GGUF and safetensors files through the real load path, in a subprocess.

Each mutated file must either fail with a ModelFileError that names it, or load every
tensor of the original, each with the shape, dtype and bytes its file declares. A
crash, a hang or any other exception fails the test (issue 7, "Files"): the loads run
in tests/load_worker.py, so a native abort fails an example instead of killing pytest.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from convert.gguf_blocks import GGUF_GROUP_SIZE
from convert.manifest import MANIFEST
from convert.safetensors_check import DTYPE_BITS, INDEX_NAME
from tests.test_gguf_file import INTERESTING_U64, layout, put
from tests.tiny_gguf import write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
FIRST_ANSWER_S = 180.0  # the worker imports mlx-lm and transformers first
ANSWER_S = 30.0
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(FAST, max_examples=2000)
# safetensors dtype -> the MLX dtype mx.load gives (F8 types come back as raw bytes)
MLX_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "BOOL": "bool"}
MLX_DTYPE |= {
    f"{k}{n}": f"{v}{n}"
    for k, v in (("I", "int"), ("U", "uint"))
    for n in (8, 16, 32, 64)
}
MLX_DTYPE |= {"C64": "complex64", "F8_E4M3": "uint8", "F8_E8M0": "uint8"}


class Loader:
    """tests/load_worker.py in a subprocess, started again after a crash or hang."""

    def __init__(self, log: Path) -> None:
        self.log, self.proc = log, None
        self.lines: queue.Queue[str | None] = queue.Queue()

    def ask(self, request: dict) -> dict:
        timeout = ANSWER_S
        if self.proc is None:
            self._start()
            timeout = FIRST_ANSWER_S
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            pytest.fail(f"the loader hung for {timeout:.0f} s on {request}")
        except BrokenPipeError:
            line = None
        if line is None:
            code, self.proc = self.proc.wait(), None
            tail = self.log.read_text(errors="replace")[-2000:]
            pytest.fail(f"the loader died (exit {code}) on {request}:\n{tail}")
        return json.loads(line)

    def _start(self) -> None:
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.load_worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
    worker = Loader(tmp_path_factory.mktemp("loader") / "stderr.txt")
    yield worker
    worker.close()


def clean_error_or_loaded(answer: dict, where: Path) -> dict | None:
    """The loaded parameters, or None for a ModelFileError that names ``where``."""
    if "error" in answer:
        assert answer["error"] == "ModelFileError", answer["message"]
        assert str(where) in answer["message"]
        problem = answer["message"].split(": ", 1)[-1]
        event("refused: " + re.sub(r"'[^']*'|\d+", "_", problem)[:40])
        return None
    event("loaded")
    return answer["params"]


def logical_shapes(params: dict) -> dict[str, list[int]]:
    """Each weight's unpacked shape: a tensor whose GGUF type changed (Q8_0 to F16,
    say) loads with other bits, or unquantized, but still whole."""
    shapes = {}
    for name, (shape, _, _) in params.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf in ("scales", "biases"):
            continue
        if scales := params.get(f"{prefix}.scales"):
            shape = [*shape[:-1], scales[0][-1] * GGUF_GROUP_SIZE]
        shapes[name] = shape
    return shapes


# --- GGUF ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_case(tmp_path_factory, loader):
    """The tiny GGUF's bytes and field offsets, and what its conversion loads as."""
    work = tmp_path_factory.mktemp("fuzz-gguf")
    write_tiny_gguf(work / "tiny.gguf")
    original = (work / "tiny.gguf").read_bytes()
    answer = loader.ask({"gguf": str(work / "tiny.gguf"), "out": str(work / "out")})
    return original, layout(original), answer["params"], work


@st.composite
def gguf_edits(draw: st.DrawFn, at: dict[str, int], size: int) -> list[tuple]:
    """One truncation, or up to three overwrites, mostly at the header's fields."""
    if draw(st.integers(0, 9)) == 0:
        return [("cut", draw(st.integers(0, size - 1)), 0)]
    fields = sorted({pos for pos in at.values() if pos <= size - 8})
    pos = st.one_of(st.sampled_from(fields), st.integers(0, size - 8))
    edit = st.one_of(
        st.tuples(st.just("<B"), pos, st.integers(0, 255)),
        st.tuples(st.sampled_from(["<I", "<Q"]), pos, st.sampled_from(INTERESTING_U64)),
    )
    return draw(st.lists(edit, min_size=1, max_size=3))


def mutate_gguf(original: bytes, edits: list[tuple]) -> bytes:
    mutated = original
    for fmt, pos, value in edits:
        if fmt == "cut":
            mutated = mutated[:pos]
        else:
            mutated = put(mutated, pos, fmt, value % (1 << 8 * struct.calcsize(fmt)))
    return mutated


def gguf_body(loader, gguf_case, data) -> None:
    original, at, reference, work = gguf_case
    path = work / "fuzz.gguf"
    path.write_bytes(mutate_gguf(original, data.draw(gguf_edits(at, len(original)))))
    answer = loader.ask({"gguf": str(path), "out": str(work / "out")})
    params = clean_error_or_loaded(answer, work)
    if params is not None:  # the same model: no tensor lost, none reshaped
        assert logical_shapes(params) == logical_shapes(reference)


test_mutated_gguf_fails_cleanly_or_loads_whole = FAST(given(data=st.data())(gguf_body))
test_mutated_gguf_long = pytest.mark.slow(LONG(given(data=st.data())(gguf_body)))


# --- safetensors -----------------------------------------------------------------


@pytest.fixture(scope="module")
def safetensors_case(tmp_path_factory, loader, tiny_model_dir):
    """A copy of the tiny MLX model without manifest or index (which would refuse
    every edit before the header check sees it), and what it loads as."""
    work = tmp_path_factory.mktemp("fuzz-st") / "model"
    shutil.copytree(tiny_model_dir, work)
    (work / MANIFEST).unlink()
    (work / INDEX_NAME).unlink()
    original = (work / "model.safetensors").read_bytes()
    answer = loader.ask({"dir": str(work)})
    return original, answer["params"], work


ODD_DIMS = [0, 1, 2, 3, 64, 2**31 - 1, 2**31, 2**62, -1, 1.5, "8", None]
ODD_NAMES = ["../../evil.weight", "", "model.norm.weight", "x" * 300]


@st.composite
def header_edit(draw: st.DrawFn, header: dict) -> dict:
    """A copy of ``header`` with one entry's dtype, shape, offsets or name changed."""
    header = json.loads(json.dumps(header))
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = header[name]
    what = draw(st.sampled_from(["dtype", "dim", "shape", "offset", "name", "drop"]))
    if what == "dtype":
        entry["dtype"] = draw(st.sampled_from([*DTYPE_BITS, "Q4_K", 4]))
    elif what == "dim" and entry["shape"]:
        i = draw(st.integers(0, len(entry["shape"]) - 1))
        entry["shape"][i] = draw(st.sampled_from(ODD_DIMS))
    elif what == "shape":  # same element count, other layout
        entry["shape"] = draw(st.permutations(entry["shape"])) + draw(
            st.sampled_from([[], [1]])
        )
    elif what == "offset":
        i = draw(st.integers(0, 1))
        entry["data_offsets"][i] += draw(st.sampled_from([-8, -4, -1, 1, 4, 8]))
    elif what == "name":
        header[draw(st.sampled_from(ODD_NAMES))] = header.pop(name)
    else:
        del header[name]
    return header


@st.composite
def safetensors_edits(draw: st.DrawFn, raw: bytes) -> bytes:
    """A structured header edit, raw header bytes, the length field, or a cut."""
    n = struct.unpack_from("<Q", raw)[0]
    kind = draw(st.sampled_from(["header", "header", "header", "bytes", "len", "cut"]))
    if kind == "cut":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "len":
        length = draw(st.sampled_from([*INTERESTING_U64, n - 1, n + 1]))
        return struct.pack("<Q", length) + raw[8:]
    if kind == "bytes":
        mutated = bytearray(raw)
        for pos, value in draw(
            st.lists(st.tuples(st.integers(8, 7 + n), st.integers(0, 255)), max_size=3)
        ):
            mutated[pos] = value
        return bytes(mutated)
    body = json.dumps(draw(header_edit(json.loads(raw[8 : 8 + n])))).encode()
    return struct.pack("<Q", len(body)) + body + raw[8 + n :]


def declared(raw: bytes, name: str) -> list:
    """[shape, MLX dtype, sha256 of the bytes] that the file declares for ``name``."""
    n = struct.unpack_from("<Q", raw)[0]
    entry = json.loads(raw[8 : 8 + n])[name]
    start, end = (8 + n + offset for offset in entry["data_offsets"])
    sha = hashlib.sha256(raw[start:end]).hexdigest()
    return [entry["shape"], MLX_DTYPE[entry["dtype"]], sha]


def safetensors_body(loader, safetensors_case, data) -> None:
    original, reference, work = safetensors_case
    mutated = data.draw(safetensors_edits(original))
    (work / "model.safetensors").write_bytes(mutated)
    params = clean_error_or_loaded(loader.ask({"dir": str(work)}), work)
    if params is not None:  # every tensor, exactly as the file declares it
        assert params.keys() == reference.keys()
        assert params == {name: declared(mutated, name) for name in params}


test_mutated_safetensors_fails_cleanly_or_loads_whole = FAST(
    given(data=st.data())(safetensors_body)
)
test_mutated_safetensors_long = pytest.mark.slow(
    LONG(given(data=st.data())(safetensors_body))
)
