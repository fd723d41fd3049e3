"""HF and MLX directories to MLX: logits match transformers; errors are clear."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx_lm import generate
from mlx_lm.convert import convert as mlx_lm_convert
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load

from convert.conversion import convert_model, plan_conversion
from convert.errors import ModelFileError
from convert.options import ConvertOptions
from convert.source import resolve_source
from convert.writer import MANIFEST, STAGING_MARK

ROPE_THETA = 500_000.0  # not mlx-lm's default, so a lost rope_theta shows in logits
N_TOKENS = 64
F32 = ConvertOptions(dtype="float32")
QUESTION = "What is the capital of France?"
ENGLISH_AND_CODE = (  # 34 SmolLM2 tokens
    "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius.\n"
    "def add(a, b):\n    return a + b\n"
)


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face directory and transformers' float32 logits on ``tokens``."""

    path: Path
    tokens: list[int]
    logits: np.ndarray  # (len(tokens), vocab)


def byte_level_tokenizer():
    """A 258-token byte-level BPE tokenizer without merges (any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab |= {"<s>": len(vocab), "</s>": len(vocab) + 1}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>"
    )


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def mlx_logits(path: Path, tokens: list[int], model_config=None) -> np.ndarray:
    model, _ = load(str(path), model_config=model_config)
    return np.array(model(mx.array([tokens]))[0].astype(mx.float32))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def safetensors_header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def assert_nothing_written(dst: Path) -> None:
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if STAGING_MARK in p.name]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Checkpoint:
    """A random 2-layer llama saved by transformers (safetensors, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_hf")
    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    tokens = np.random.default_rng(0).integers(0, len(tokenizer), N_TOKENS).tolist()
    return Checkpoint(path, tokens, torch_logits(model, tokens))


@pytest.fixture
def tiny_copy(tmp_path, tiny_hf) -> Path:
    """A copy of the tiny checkpoint that a test may damage."""
    return Path(shutil.copytree(tiny_hf.path, tmp_path / "src"))


def test_float32_logits_match_transformers(tmp_path, tiny_hf):
    out = convert_model(str(tiny_hf.path), tmp_path / "out", F32, progress=False)
    assert out.path == tmp_path / "out"
    got = mlx_logits(out.path, tiny_hf.tokens)
    np.testing.assert_allclose(got, tiny_hf.logits, atol=1e-4)


@pytest.mark.parametrize(
    ("bits", "group_size", "min_agreement", "max_error"),
    [(8, 64, 0.9, 0.03), (8, 32, 0.9, 0.03), (4, 32, 0.6, 0.3), (4, 64, 0.6, 0.3)],
)
def test_quantized_logits_stay_close(
    tmp_path, tiny_hf, bits, group_size, min_agreement, max_error
):
    options = ConvertOptions(bits=bits, group_size=group_size, dtype="float32")
    out = convert_model(str(tiny_hf.path), tmp_path / "q", options, progress=False)
    config = json.loads((out.path / "config.json").read_text())
    assert config["quantization"] == {
        "group_size": group_size,
        "bits": bits,
        "mode": "affine",
    }
    got = mlx_logits(out.path, tiny_hf.tokens)
    scale = np.abs(tiny_hf.logits).max()
    assert np.abs(got - tiny_hf.logits).max() < max_error * scale
    assert top1_agreement(got, tiny_hf.logits) >= min_agreement


def test_manifest_lists_every_file_with_its_sha256(tmp_path, tiny_hf):
    options = ConvertOptions(bits=4, dtype="float32")
    out = convert_model(str(tiny_hf.path), tmp_path / "q", options, progress=False)
    manifest = json.loads((out.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {p.name for p in out.path.iterdir()} - {MANIFEST}
    for name, entry in manifest["files"].items():
        data = (out.path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["options"]["bits"] == 4


def test_mixed_recipe_gives_more_bits_to_some_layers(tmp_path, tiny_hf):
    options = ConvertOptions(recipe="mixed_4_6", dtype="float32")
    out = convert_model(str(tiny_hf.path), tmp_path / "mix", options, progress=False)
    quantization = json.loads((out.path / "config.json").read_text())["quantization"]
    per_layer = {k: v["bits"] for k, v in quantization.items() if isinstance(v, dict)}
    assert per_layer["model.layers.1.mlp.down_proj"] == 6
    assert per_layer["lm_head"] == 6
    assert per_layer["model.layers.0.mlp.down_proj"] == 4
    got = mlx_logits(out.path, tiny_hf.tokens)
    assert top1_agreement(got, tiny_hf.logits) >= 0.6


@pytest.mark.parametrize(
    ("config_text", "match"),
    [
        (None, "has no config.json"),
        ('{"model_type": "llama",', "is not valid JSON"),
        ('{"model_type": "llama", "rope_theta": NaN}', "NaN is not valid JSON"),
        ('["llama"]', 'has no "model_type" string'),
        ('{"model_type": "no_such_arch"}', "'no_such_arch' is unknown to mlx-lm"),
    ],
)
def test_bad_config_is_refused(tmp_path, tiny_copy, config_text, match):
    config = tiny_copy / "config.json"
    config.unlink()
    if config_text is not None:
        config.write_text(config_text)
    with pytest.raises(ModelFileError, match=match):
        convert_model(str(tiny_copy), tmp_path / "out", F32, progress=False)
    assert_nothing_written(tmp_path / "out")


def test_truncated_safetensors_is_refused(tmp_path, tiny_copy):
    weights = tiny_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        convert_model(str(tiny_copy), tmp_path / "out", F32, progress=False)
    assert_nothing_written(tmp_path / "out")


def test_pickle_weights_need_allow_pickle(tmp_path, tiny_copy, tiny_hf):
    state = {
        k: torch.from_numpy(np.array(v))
        for k, v in mx.load(str(tiny_copy / "model.safetensors")).items()
    }
    (tiny_copy / "model.safetensors").unlink()
    torch.save(state, tiny_copy / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="--allow-pickle"):
        convert_model(str(tiny_copy), tmp_path / "out", F32, progress=False)
    assert_nothing_written(tmp_path / "out")

    options = ConvertOptions(dtype="float32", allow_pickle=True)
    out = convert_model(str(tiny_copy), tmp_path / "out", options, progress=False)
    np.testing.assert_allclose(
        mlx_logits(out.path, tiny_hf.tokens), tiny_hf.logits, atol=1e-4
    )


def test_existing_output_needs_force(tmp_path, tiny_hf):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        convert_model(str(tiny_hf.path), dst, F32, progress=False)
    assert (dst / "keep.txt").read_text() == "mine"

    options = ConvertOptions(dtype="float32", force=True)
    convert_model(str(tiny_hf.path), dst, options, progress=False)
    assert not (dst / "keep.txt").exists()
    assert (dst / MANIFEST).is_file()
    assert not [p for p in tmp_path.iterdir() if STAGING_MARK in p.name]


def test_mlx_lm_quantized_directory_converts_again(tmp_path, tiny_hf):
    mlx_dir = tmp_path / "mlxlm"
    mlx_lm_convert(
        hf_path=str(tiny_hf.path),
        mlx_path=str(mlx_dir),
        quantize=True,
        q_bits=4,
        q_group_size=32,
    )
    out = convert_model(str(mlx_dir), tmp_path / "again", F32, progress=False)
    config = json.loads((out.path / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["rope_theta"] == ROPE_THETA
    theirs = mx.load(str(mlx_dir / "model.safetensors"))
    ours = mx.load(str(out.path / "model.safetensors"))
    assert set(ours) == set(theirs)
    for name, array in theirs.items():
        assert ours[name].dtype == array.dtype
        np.testing.assert_array_equal(np.array(ours[name]), np.array(array))
    # mlx-lm 0.32.2 reads rope_theta only at the top level (transformers 5 nests it).
    reference = mlx_logits(mlx_dir, tiny_hf.tokens, {"rope_theta": ROPE_THETA})
    got = mlx_logits(out.path, tiny_hf.tokens)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert top1_agreement(got, tiny_hf.logits) >= 0.6
    # --dequantize unpacks the same values into float32 layers
    floats = ConvertOptions(dtype="float32", dequantize=True)
    flat = convert_model(str(mlx_dir), tmp_path / "flat", floats, progress=False)
    assert "quantization" not in json.loads((flat.path / "config.json").read_text())
    np.testing.assert_allclose(mlx_logits(flat.path, tiny_hf.tokens), got, atol=1e-4)


@pytest.mark.parametrize("options", [F32, ConvertOptions(bits=8, dtype="float32")])
def test_plan_predicts_the_written_size(tmp_path, tiny_hf, options):
    source = resolve_source(str(tiny_hf.path))
    plan = plan_conversion(source, options, tmp_path)
    out = convert_model(str(tiny_hf.path), tmp_path / "out", options, progress=False)
    files = list(out.path.glob("*.safetensors"))
    written = sum(f.stat().st_size for f in files)
    assert plan.output_bytes == written - sum(map(safetensors_header_bytes, files))
    assert plan.output_bytes == pytest.approx(written, rel=0.05)  # tiny: headers weigh
    assert plan == out.plan
    assert plan.tensors == 2 + 2 * 9 + 1  # embed, lm_head, 9 per layer, final norm


@dataclass(frozen=True)
class RealCheckpoint(Checkpoint):
    answer: str  # transformers' greedy answer to QUESTION


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory, smollm2_gguf) -> RealCheckpoint:
    """SmolLM2-135M-Instruct as a Hugging Face safetensors directory, made by
    transformers from the catalog GGUF (DESIGN.md, "Real models without a model hub").
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("smollm2_hf")
    gguf = {"gguf_file": smollm2_gguf.name}
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, dtype=torch.float32, **gguf
    )
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, **gguf)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight")  # tied to the embedding
    save_file(state, str(path / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(path)
    del model, state

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    chat = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        answer = model.generate(prompt, max_new_tokens=20, do_sample=False)
    tokens = tokenizer(ENGLISH_AND_CODE).input_ids
    return RealCheckpoint(
        path,
        tokens,
        torch_logits(model, tokens),
        tokenizer.decode(answer[0, prompt.shape[1] :], skip_special_tokens=True),
    )


def ask(path: Path, question: str) -> str:
    model, tokenizer = load(str(path))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True
    )
    return generate(model, tokenizer, prompt, max_tokens=20, sampler=make_sampler(0.0))


@pytest.mark.slow
def test_smollm2_checkpoint_answers_in_transformers(smollm2_hf):
    assert "Paris" in smollm2_hf.answer


@pytest.mark.slow
def test_smollm2_float32_matches_transformers(tmp_path, smollm2_hf):
    out = convert_model(str(smollm2_hf.path), tmp_path / "f32", F32, progress=False)
    got = mlx_logits(out.path, smollm2_hf.tokens)
    assert len(smollm2_hf.tokens) >= 20
    assert np.abs(got - smollm2_hf.logits).max() < 1e-2
    assert top1_agreement(got, smollm2_hf.logits) == 1.0
    assert "Paris" in ask(out.path, QUESTION)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bits", "group_size", "min_agreement", "question"),
    [
        (8, 64, 0.9, QUESTION),  # measured: 97% agreement
        # The weights are Q4_1 already: 4 bits again cost more than on a bf16 model
        # (measured: 62% agreement at group 32 or 64). QUESTION's first answer token
        # wins by 0.08 nats; asking for one sentence gives 1.5. Group 64 still answers
        # in French.
        (4, 32, 0.5, QUESTION + " Answer in one sentence."),
    ],
)
def test_smollm2_quantized_stays_close(
    tmp_path, smollm2_hf, bits, group_size, min_agreement, question
):
    options = ConvertOptions(bits=bits, group_size=group_size, dtype="float32")
    out = convert_model(str(smollm2_hf.path), tmp_path / "q", options, progress=False)
    got = mlx_logits(out.path, smollm2_hf.tokens)
    assert top1_agreement(got, smollm2_hf.logits) >= min_agreement
    assert "Paris" in ask(out.path, question)
