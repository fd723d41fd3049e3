"""GGUF -> MLX conversion on tiny random GGUF files written like llama.cpp's."""

from __future__ import annotations

import json

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from mlx_lm.utils import load

from convert.conversion import convert_model
from convert.errors import ModelFileError
from convert.from_gguf import build_model, gguf_config
from convert.gguf_file import GGUFFile
from convert.options import ConvertOptions
from tests.tiny_gguf import HIDDEN, TOKENS, write_tiny_gguf

F32 = ConvertOptions(dtype="float32")
PROMPT = [5, 80, 120, 33, 200, 7, 64, 1, 90, 250]


def reference_logits(values: dict[str, np.ndarray], config: dict) -> np.ndarray:
    """Logits of an mlx-lm float model built from the HF-layout values."""
    model = build_model(config)
    model.load_weights([(k, mx.array(v)) for k, v in values.items()], strict=True)
    return np.array(model(mx.array([PROMPT])))


def converted_logits(path) -> np.ndarray:
    model, _ = load(str(path))
    return np.array(model(mx.array([PROMPT])))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("matrix_type", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0])
def test_block_types_convert_exactly(tmp_path, arch, matrix_type):
    src = tmp_path / "tiny.gguf"
    values = write_tiny_gguf(src, arch, matrix_type=matrix_type)
    out = convert_model(str(src), tmp_path / "out", F32, progress=False).path
    with GGUFFile(src) as g:
        config = gguf_config(g)
    expected = reference_logits(values, config)
    np.testing.assert_allclose(converted_logits(out), expected, atol=2e-5, rtol=1e-5)
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["group_size"] == 32


def test_float_matrices_are_quantized_only_when_asked(tmp_path):
    src = tmp_path / "tiny.gguf"
    values = write_tiny_gguf(src, "llama", matrix_type=T.F16)
    kept = convert_model(str(src), tmp_path / "f32", F32, progress=False).path
    with GGUFFile(src) as g:
        expected = reference_logits(values, gguf_config(g))
    np.testing.assert_allclose(converted_logits(kept), expected, atol=2e-5, rtol=1e-5)
    q4 = ConvertOptions(bits=4, group_size=32, dtype="float32")
    four = convert_model(str(src), tmp_path / "q4", q4, progress=False).path
    config = json.loads((four / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    # the Q8_0 embedding keeps its own 8 bits, recorded per layer
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    logits = converted_logits(four)
    agree = (logits.argmax(-1) == expected.argmax(-1)).mean()
    assert agree >= 0.7 and not np.allclose(logits, expected, atol=1e-5)


def test_output_has_tokenizer_with_chat_template(tmp_path):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, "qwen2")
    out = convert_model(str(src), tmp_path / "out", F32, progress=False).path
    _, tokenizer = load(str(out))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token_id == TOKENS.index("<|im_end|>")
    assert tokenizer.decode(tokenizer.encode("héllo 你好")) == "héllo 你好"
    files = json.loads((out / "silica-manifest.json").read_text())["files"]
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= set(files)


def test_existing_output_is_refused_then_replaced_with_force(tmp_path):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        convert_model(str(src), out, F32, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    convert_model(
        str(src), out, ConvertOptions(dtype="float32", force=True), progress=False
    )
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".silica-tmp-" in p.name]


def test_unknown_architecture_is_refused(tmp_path):
    src = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(src), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="architecture 'mamba' is not supported"):
        convert_model(str(src), tmp_path / "out", F32, progress=False)
    assert not (tmp_path / "out").exists()


def rewrite_gguf(src, dst, edit=lambda name, raw, t: (raw, t), **metadata) -> None:
    """Copy a GGUF file, passing each (name, raw bytes, type) through ``edit``.

    ``edit`` returns the (raw, type) to write, or None to drop the tensor; keyword
    arguments replace metadata values (dots written as double underscores).
    """
    overrides = {k.replace("__", "."): v for k, v in metadata.items()}
    with GGUFFile(src) as g:
        writer = gguf.GGUFWriter(str(dst), g.architecture)
        for key, value in g.metadata.items():
            if not key.startswith(("GGUF.", "general.architecture")):
                _copy_kv(writer, key, overrides.get(key, value))
        for name, t in g.tensors.items():
            if kept := edit(name, g.raw(name), t.ggml_type):
                writer.add_tensor(name, kept[0], raw_dtype=kept[1])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _copy_kv(writer: gguf.GGUFWriter, key: str, value) -> None:
    if isinstance(value, list):
        writer.add_array(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_uint32(key, value)


def test_missing_tensor_is_named(tmp_path):
    write_tiny_gguf(tmp_path / "full.gguf")
    src = tmp_path / "partial.gguf"
    rewrite_gguf(
        tmp_path / "full.gguf",
        src,
        lambda name, raw, qtype: (
            None if name == "blk.1.ffn_up.weight" else (raw, qtype)
        ),
    )
    with pytest.raises(ModelFileError, match="blk.1.ffn_up.weight"):
        convert_model(str(src), tmp_path / "out", F32, progress=False)


def test_truncated_gguf_is_refused_before_any_native_loader(tmp_path):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="past the end of the file"):
        convert_model(str(src), tmp_path / "out", F32, progress=False)
    assert not (tmp_path / "out").exists()


def test_recipe_is_refused_for_gguf(tmp_path):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    with pytest.raises(ValueError, match="--recipe"):
        convert_model(str(src), tmp_path / "o", ConvertOptions(recipe="mixed_4_6"))


def test_undecodable_tensor_type_is_named(tmp_path):
    write_tiny_gguf(tmp_path / "full.gguf")

    def to_q8_1(name, raw, qtype):
        if name != "blk.0.ffn_up.weight":
            return raw, qtype
        # Q8_1: 40-byte blocks of 32 values, which gguf cannot decode
        return np.zeros((raw.shape[0], HIDDEN // 32 * 40), np.uint8), T.Q8_1

    src = tmp_path / "odd.gguf"
    rewrite_gguf(tmp_path / "full.gguf", src, to_q8_1)
    with pytest.raises(ModelFileError, match="blk.0.ffn_up.weight.*Q8_1"):
        convert_model(str(src), tmp_path / "out", F32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.gguf", "odd.gguf"]


@pytest.mark.parametrize("value", [0, "nine"])
def test_impossible_metadata_is_refused(tmp_path, value):
    write_tiny_gguf(tmp_path / "full.gguf")
    src = tmp_path / "odd.gguf"
    rewrite_gguf(tmp_path / "full.gguf", src, llama__attention__head_count=value)
    with pytest.raises(ModelFileError, match="invalid.*num_attention_heads"):
        convert_model(str(src), tmp_path / "out", F32, progress=False)


def test_dequantize_writes_float_weights_with_the_same_values(tmp_path):
    src = tmp_path / "tiny.gguf"
    values = write_tiny_gguf(src, "llama", matrix_type=T.Q4_1)
    options = ConvertOptions(dtype="float32", dequantize=True)
    out = convert_model(str(src), tmp_path / "f32", options, progress=False).path
    assert "quantization" not in json.loads((out / "config.json").read_text())
    with GGUFFile(src) as g:
        expected = reference_logits(values, gguf_config(g))
    np.testing.assert_allclose(converted_logits(out), expected, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="--dequantize"):
        ConvertOptions(bits=4, dequantize=True)
