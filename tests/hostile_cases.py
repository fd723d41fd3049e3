"""Hostile model files, one builder per case of docs/FILES.md.

Each builder makes its case inside a sandbox folder from the tiny model (an MLX
directory and the GGUF file it came from) and returns the path a user would give.
``outside/`` in the sandbox holds files that links point to and that nothing may touch.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from convert.manifest import MANIFEST, STAGING_MARK
from convert.safetensors_check import INDEX_NAME
from tests.test_gguf_file import layout, put

WEIGHTS = "model.safetensors"
NORM = "model.norm.weight"  # F32 [64] at data bytes 0..256
SCALES = "model.layers.1.mlp.gate_proj.scales"  # F32 [128, 2]


class Sources:
    """The tiny model as an MLX directory and as the GGUF file it came from."""

    def __init__(self, mlx_dir: Path, gguf_file: Path) -> None:
        self.mlx_dir, self.gguf_file = mlx_dir, gguf_file


class Evil:
    """Unpickling this creates ``marker``: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def mlx(src: Sources, root: Path, *, manifest: bool = False) -> Path:
    """A copy of the MLX directory; without its manifest and index unless asked, so
    that an edited file meets the check a case is about first."""
    d = Path(shutil.copytree(src.mlx_dir, root / "src"))
    if not manifest:
        (d / MANIFEST).unlink()
        (d / INDEX_NAME).unlink()
    return d


def gguf(src: Sources, root: Path, patch: Callable | None = None) -> Path:
    data = src.gguf_file.read_bytes()
    path = root / "src.gguf"
    path.write_bytes(patch(data, layout(data)) if patch else data)
    return path


def edit_header(d: Path, change: Callable[[dict], None]) -> Path:
    raw = (d / WEIGHTS).read_bytes()
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8 : 8 + n])
    change(header)
    body = json.dumps(header).encode()
    (d / WEIGHTS).write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    return d


def edit_config(d: Path, **fields) -> Path:
    config = json.loads((d / "config.json").read_text())
    for key, value in fields.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (d / "config.json").write_text(json.dumps(config))
    return d


def write(d: Path, name: str, data: bytes | str) -> Path:
    target = d / name
    target.unlink(missing_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    return d


def link(d: Path, name: str, target: Path) -> Path:
    (d / name).unlink(missing_ok=True)
    (d / name).symlink_to(target)
    return d


def evil_pickle(root: Path) -> bytes:
    return pickle.dumps({"w": Evil(root / "outside" / "pwned")})


def renamed_gguf_tensor(data: bytes, at: dict) -> bytes:
    """``output_norm.weight`` renamed to a path of the same length."""
    start = at["output_norm.weight"] + 8
    return data[:start] + b"../../../../evil.w" + data[start + 18 :]


def overlap(header: dict) -> None:
    header["model.layers.1.post_attention_layernorm.weight"]["data_offsets"] = [4, 260]


def second_shard(d: Path) -> Path:
    shutil.copy(d / WEIGHTS, d / "model-extra.safetensors")
    return d


def _pickle_dir(s: Sources, r: Path) -> Path:
    return _drop(write(mlx(s, r), "pytorch_model.bin", evil_pickle(r)) / WEIGHTS)


def _drop(path: Path) -> Path:
    path.unlink()
    return path.parent


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _copy(path: Path, folder: Path) -> Path:
    return Path(shutil.copy(path, folder / path.name))


def _fifo(d: Path, name: str) -> Path:
    (d / name).unlink()
    os.mkfifo(d / name)
    return d


def _gguf_dir_link(s: Sources, r: Path) -> Path:
    (r / "src").mkdir()
    (r / "src" / "model.gguf").symlink_to(_copy(s.gguf_file, r / "outside"))
    return r / "src"


def _index_parent(d: Path) -> Path:
    index = json.loads((d / INDEX_NAME).read_text())
    index["weight_map"][NORM] = "../outside/model.safetensors"
    (d / INDEX_NAME).write_text(json.dumps(index))
    (d / MANIFEST).unlink()
    return d


def _manifest_parent(d: Path) -> Path:
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"]["../outside/secret.txt"] = {"size": 6, "sha256": "0" * 64}
    (d / MANIFEST).write_text(json.dumps(manifest))
    return d


Builder = Callable[[Sources, Path], Path]
Case = tuple[Builder, str]  # entry points: L = load_checked, C = convert_model,
# P = convert_model with allow_pickle
T = "tokenizer.json"


def on_dir(edit: Callable[[Path], Path], *, manifest: bool = False) -> Case:
    return (lambda s, r: edit(mlx(s, r, manifest=manifest)), "LC")


def config(**fields) -> Case:
    return on_dir(lambda d: edit_config(d, **fields))


def config_text(text: str) -> Case:
    return on_dir(lambda d: write(d, "config.json", text))


def header(change: Callable[[dict], None]) -> Case:
    return on_dir(lambda d: edit_header(d, change))


def on_gguf(patch: Callable[[bytes, dict], bytes]) -> Case:
    return (lambda s, r: gguf(s, r, patch), "C")


def field(name: str, fmt: str, value: int, skip: int = 0) -> Case:
    return on_gguf(lambda d, at: put(d, (at[name] if name else 0) + skip, fmt, value))


def given_file(name: str, data: Callable[[Path], bytes]) -> Case:
    return (lambda s, r: _file(r / name, data(r)), "C")


ZERO_SIZED = {"dtype": "F32", "shape": [2**31, 0], "data_offsets": [0, 0]}
CASES: dict[str, Case] = {
    "corrupt/truncated-weights": on_dir(
        lambda d: write(d, WEIGHTS, (d / WEIGHTS).read_bytes()[:-999])
    ),
    "corrupt/overlapping-tensors": header(overlap),
    "corrupt/unknown-dtype": header(lambda h: h[NORM].update(dtype="Q4_K")),
    "corrupt/dimension-over-int32": header(lambda h: h.update(x=ZERO_SIZED)),
    "corrupt/dtype-mlx-cannot-load": header(
        lambda h: h[NORM].update(dtype="F64", shape=[32])
    ),
    "corrupt/scales-do-not-fit": header(lambda h: h[SCALES].update(shape=[2, 128])),
    "corrupt/tensor-in-two-files": on_dir(second_shard),
    "corrupt/weights-changed-after-conversion": on_dir(
        lambda d: write(d, WEIGHTS, (d / WEIGHTS).read_bytes()[:-4]), manifest=True
    ),
    "corrupt/weights-not-in-manifest": on_dir(second_shard, manifest=True),
    "corrupt/broken-tokenizer": on_dir(lambda d: write(d, T, '{"model": 5}')),
    "corrupt/empty-gguf": on_gguf(lambda d, at: b""),
    "corrupt/truncated-gguf": on_gguf(lambda d, at: d[:-100]),
    "corrupt/gguf-tensor-type-shrinks": field("token_embd.weight.type", "<I", 2),
    "config/missing": on_dir(lambda d: _drop(d / "config.json")),
    "config/not-json": config_text('{"model_type": "llama",'),
    "config/nan": config_text('{"model_type": "llama", "rope_theta": NaN}'),
    "config/duplicate-key": config_text('{"model_type": "llama", "model_type": "x"}'),
    "config/not-an-object": config_text('["llama"]'),
    "config/unknown-architecture": config(model_type="no_such_arch"),
    "config/architecture-is-a-path": config(model_type="../../os"),
    "config/architecture-not-a-model": config(model_type="cache"),
    "config/runs-code": config(model_file="evil.py"),
    "config/size-is-a-string": config(hidden_size="64"),
    "config/absurd-layer-count": config(num_hidden_layers=10**6),
    "config/zero-heads": config(num_attention_heads=0),
    "config/negative-epsilon": config(rms_norm_eps=-1),
    "config/bad-token-id": config(eos_token_id=-5),
    "config/bad-quantization": config(quantization={"bits": "4", "group_size": 32}),
    "config/missing-size": config(hidden_size=None),
    "config/sizes-disagree-with-weights": config(intermediate_size=256),
    "config/hidden-size-shrunk": config(hidden_size=1),
    "config/oversized": config_text('{"model_type": "llama"' + " " * (17 << 20) + "}"),
    "config/gguf-absurd-layer-count": field("llama.block_count.value", "<I", 10**6),
    "config/gguf-sizes-disagree-with-tensors": field(
        "llama.embedding_length.value", "<I", 128
    ),
    "gguf/tensor-count-2^63": field("", "<Q", 1 << 63, skip=8),
    "gguf/array-length-2^63": field(
        "tokenizer.ggml.tokens.value", "<Q", 1 << 63, skip=4
    ),
    "gguf/string-length-2^63": field("general.architecture.value", "<Q", 1 << 63),
    "gguf/100-dimensions": field("token_embd.weight.ndims", "<I", 100),
    "gguf/unknown-tensor-type": field("token_embd.weight.type", "<I", 9999),
    "gguf/overlapping-tensors": field("output_norm.weight.offset", "<Q", 0),
    "gguf/offset-past-the-end": field("output_norm.weight.offset", "<Q", 1 << 40),
    "pickle/only-pickle-weights": (lambda s, r: _pickle_dir(s, r), "LC"),
    "pickle/allowed-but-not-only-tensors": (lambda s, r: _pickle_dir(s, r), "P"),
    "pickle/pickle-file-given": given_file("model.pth", evil_pickle),
    "pickle/pickle-named-gguf": given_file("model.gguf", evil_pickle),
    "pickle/torch-zip-named-gguf": given_file("model.gguf", lambda r: b"PK\x03\x04"),
    "pickle/pickle-named-safetensors": (
        lambda s, r: write(mlx(s, r), WEIGHTS, evil_pickle(r)),
        "LC",
    ),
    "traversal/weights-link-outside": (
        lambda s, r: link(
            mlx(s, r), WEIGHTS, _copy(s.mlx_dir / WEIGHTS, r / "outside")
        ),
        "LC",
    ),
    "traversal/config-link-outside": (
        lambda s, r: link(mlx(s, r), "config.json", r / "outside" / "secret.txt"),
        "LC",
    ),
    "traversal/gguf-link-outside": (lambda s, r: _gguf_dir_link(s, r), "C"),
    "traversal/fifo": on_dir(lambda d: _fifo(d, T)),
    "traversal/broken-link": (
        lambda s, r: link(mlx(s, r), "extra.json", r / "gone.json"),
        "LC",
    ),
    "traversal/link-loop": on_dir(lambda d: link(d, "loop.json", d / "loop.json")),
    "traversal/index-names-a-parent-file": on_dir(_index_parent, manifest=True),
    "traversal/tensor-name-is-a-path": header(
        lambda h: h.update({"../../outside/evil": h.pop(NORM)})
    ),
    "traversal/gguf-tensor-name-is-a-path": on_gguf(renamed_gguf_tensor),
    "traversal/manifest-names-a-parent-file": on_dir(_manifest_parent, manifest=True),
    "traversal/staging-directory": (
        lambda s, r: Path(shutil.copytree(s.mlx_dir, r / f".m{STAGING_MARK}x")),
        "LC",
    ),
}


INTERRUPTIONS = ("interrupt/killed", "interrupt/ctrl-c", "interrupt/no-disk-space")
DOC = Path(__file__).resolve().parent.parent / "docs" / "FILES.md"
ROW = re.compile(r"^\| `([^`]+)` \| .+ \| `([^`]+)` \|$", re.MULTILINE)


def documented() -> dict[str, str]:
    """Case id -> the words its error says, from the table in docs/FILES.md."""
    return {m[1]: m[2] for m in ROW.finditer(DOC.read_text())}
