"""Shared fixtures: real catalog models (pulled once into the user cache)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from convert import catalog


def pytest_report_header(config) -> str:
    # A full run writes several GB of converted models under the temp dir at once;
    # when a CI disk runs out, this line says so before the failures do.
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    return f"temp dir {tempfile.gettempdir()}: {free:.1f} GiB free"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), sha256-checked."""
    return catalog.pull("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def qwen05_gguf() -> Path:
    """The real Qwen2.5-Coder-0.5B-Instruct GGUF (491 MB), sha256-checked."""
    return catalog.pull("qwen2.5-coder-0.5b-instruct", progress=False)


@pytest.fixture(scope="session")
def qwen15_gguf() -> Path:
    """The real Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (1.1 GB), sha256-checked."""
    return catalog.pull("qwen2.5-coder-1.5b-instruct", progress=False)


@pytest.fixture(scope="session")
def qwen05_dir(qwen05_gguf, tmp_path_factory) -> Path:
    """Qwen2.5-Coder-0.5B in float32: 4-bit matmuls on MLX's CPU backend take ~1 s
    per prompt token here, which would make a 30-token prefill outlast any sane
    step deadline; float32 runs through BLAS."""
    from convert import ConvertOptions, convert_model

    dst = tmp_path_factory.mktemp("qwen05") / "f32"
    options = ConvertOptions(dequantize=True, dtype="float32")
    return convert_model(str(qwen05_gguf), dst, options, progress=False).path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random llama (2 layers, 261 tokens, context 256) as an MLX directory."""
    return _tiny_model(tmp_path_factory, dequantize=False)


@pytest.fixture(scope="session")
def tiny_float_model_dir(tmp_path_factory) -> Path:
    """The same llama with every weight float32 (no quantized layers)."""
    return _tiny_model(tmp_path_factory, dequantize=True)


def _tiny_model(tmp_path_factory, dequantize: bool) -> Path:
    from convert import ConvertOptions, convert_model
    from tests.tiny_gguf import write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-model")
    write_tiny_gguf(root / "tiny.gguf")
    options = ConvertOptions(dequantize=dequantize, dtype="float32")
    return convert_model(
        str(root / "tiny.gguf"), root / "mlx", options, progress=False
    ).path


@pytest.fixture(scope="module")
def engine():
    """An engine of the test module's own (its worker thread ends with the module)."""
    from engine import Engine

    with Engine() as engine:
        yield engine


@pytest.fixture(scope="module")
def model(engine, tiny_model_dir):
    """The tiny model, loaded as "tiny" on the module's engine."""
    return engine.load(str(tiny_model_dir), name="tiny")


# The web UI's handler tests share these (test_webui_app.py has its own variants).
@pytest.fixture(scope="module")
def pool(engine, model):
    from engine import ModelPool

    return ModelPool(engine, {"tiny": model})


@pytest.fixture
def settings(tmp_path):
    from webui.settings import UISettings

    return UISettings(
        default_model="tiny",
        arena_db=tmp_path / "arena.sqlite3",
        export_dir=tmp_path / "exports",
        update_interval_s=0.001,
    )
