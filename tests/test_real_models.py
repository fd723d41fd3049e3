"""The catalog's real models: pull, convert, load in mlx-lm, answer (slow: minutes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from gguf.quants import dequantize
from mlx_lm import generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load

from convert.gguf_blocks import NATIVE_BITS
from convert.gguf_file import GGUFFile
from engine.cli import main
from tests.tiny_gguf import llama_cpp_permute

pytestmark = pytest.mark.slow
GGUF_TO_MLX = {
    "token_embd": "model.embed_tokens",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def ask(path, question: str, max_tokens: int, system: str | None = None) -> str:
    model, tokenizer = load(str(path))
    messages = [{"role": "system", "content": system}] if system else []
    prompt = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": question}], add_generation_prompt=True
    )
    return generate(
        model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(0.0)
    )


def run_first_function(answer: str, argument: str) -> str:
    """Run the first function in the answer's code block, in a separate process."""
    code = answer.split("```python", 1)[-1].split("```", 1)[0]
    name = re.search(r"def (\w+)\(", code).group(1)
    call = f"{code}\nprint({name}({argument!r}))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", call], capture_output=True, text=True, timeout=20
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def smollm2_4bit(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("smol") / "smollm2-4bit"
    assert (
        main(["convert", "smollm2-135m-instruct", "-o", str(out), "--bits", "4", "-q"])
        == 0
    )
    return out


def test_smollm2_converts_and_answers_paris_in_mlx_lm(smollm2_4bit):
    answer = ask(smollm2_4bit, "What is the capital of France?", 30)
    assert "Paris" in answer


def mlx_name(gguf_name: str) -> str:
    parts = gguf_name.removesuffix(".weight").split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{GGUF_TO_MLX[parts[2]]}"
    return GGUF_TO_MLX[parts[0]]


def count_exact_tensors(gguf_path, out) -> dict[str, int]:
    """Check each natively repacked tensor of ``out`` against gguf's reference."""
    weights = {}
    for shard in out.glob("model*.safetensors"):
        weights |= mx.load(str(shard))
    config = json.loads((out / "config.json").read_text())
    checked: dict[str, int] = {}
    with GGUFFile(gguf_path) as g:
        for name, t in g.tensors.items():
            if t.ggml_type not in NATIVE_BITS:
                continue
            ref = dequantize(g.raw(name), t.ggml_type).reshape(t.shape)
            if config["model_type"] == "llama" and name.endswith(
                ("attn_q.weight", "attn_k.weight")
            ):
                heads = config[
                    "num_attention_heads"
                    if ".attn_q." in name
                    else "num_key_value_heads"
                ]
                ref = ref[np.argsort(llama_cpp_permute(np.arange(t.shape[0]), heads))]
            layer = mlx_name(name)
            ours = mx.dequantize(
                weights[f"{layer}.weight"],
                weights[f"{layer}.scales"].astype(mx.float32),
                weights[f"{layer}.biases"].astype(mx.float32),
                group_size=32,
                bits=NATIVE_BITS[t.ggml_type],
            )
            assert np.array_equal(np.array(ours), ref), name
            checked[t.ggml_type.name] = checked.get(t.ggml_type.name, 0) + 1
    return checked


def test_smollm2_q4_1_and_q8_0_weights_are_bit_exact(smollm2_gguf, smollm2_4bit):
    assert count_exact_tensors(smollm2_gguf, smollm2_4bit) == {"Q4_1": 210, "Q8_0": 1}


def test_smollm2_eval_report_shows_lossless_import(tmp_path, smollm2_gguf, capsys):
    out = tmp_path / "smol"
    argv = [
        "convert",
        str(smollm2_gguf),
        "-o",
        str(out),
        "--eval",
        "--eval-tokens",
        "1024",
    ]
    assert main([*argv, "-q"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "KL" in printed
    kl_line = next(line for line in printed.splitlines() if "KL" in line)
    assert float(kl_line.split("mean")[1].split()[0]) < 1e-3


@pytest.mark.parametrize("fixture", ["qwen05_gguf", "qwen15_gguf"])
def test_qwen_coder_converts_and_writes_code(request, tmp_path, fixture):
    src = request.getfixturevalue(fixture)
    out = tmp_path / "qwen"
    assert main(["convert", str(src), "-o", str(out), "-q"]) == 0
    answer = ask(
        out,
        "Write a Python function that reverses a string.",
        80,
        system="Reply with only a Python code block, no explanation.",
    )
    assert run_first_function(answer, "hello, 世界") == "界世 ,olleh", answer
    if fixture == "qwen15_gguf":  # Q4_K_M: its Q4_K tensors repack bit-exact
        assert count_exact_tensors(src, out) == {"Q4_K": 169}
