"""Write tiny random GGUF files (llama or qwen2) the way llama.cpp's converter does."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType as T
from transformers.convert_slow_tokenizer import bytes_to_unicode

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 128
MERGES = ["h e", "Ġ t"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENS = list(bytes_to_unicode().values()) + ["he", "Ġt"] + SPECIALS
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def hf_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Hugging Face parameter names and shapes of the tiny model."""
    head_dim, vocab = HIDDEN // HEADS, len(TOKENS)
    shapes = {
        "model.embed_tokens.weight": (vocab, HIDDEN),
        "model.norm.weight": (HIDDEN,),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": (HEADS * head_dim, HIDDEN),
            f"{p}.self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            f"{p}.self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            f"{p}.self_attn.o_proj.weight": (HIDDEN, HEADS * head_dim),
            f"{p}.mlp.gate_proj.weight": (FFN, HIDDEN),
            f"{p}.mlp.up_proj.weight": (FFN, HIDDEN),
            f"{p}.mlp.down_proj.weight": (HIDDEN, FFN),
            f"{p}.input_layernorm.weight": (HIDDEN,),
            f"{p}.post_attention_layernorm.weight": (HIDDEN,),
        }
        if arch == "qwen2":
            shapes[f"{p}.self_attn.q_proj.bias"] = (HEADS * head_dim,)
            shapes[f"{p}.self_attn.k_proj.bias"] = (KV_HEADS * head_dim,)
            shapes[f"{p}.self_attn.v_proj.bias"] = (KV_HEADS * head_dim,)
    if arch == "qwen2":
        shapes["lm_head.weight"] = (vocab, HIDDEN)
    return shapes


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permute of q/k rows (its forward direction)."""
    rows = w.shape[0]
    return (
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(
    path: Path, arch: str = "llama", *, matrix_type: T = T.Q4_0, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write a random tiny model; return the float32 values it holds, in HF layout.

    Matrices are stored as ``matrix_type`` (the embedding as Q8_0, norms as F32), so
    the returned values are what an exact importer must reproduce.
    """
    rng = np.random.default_rng(seed)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], LAYERS)
    writer = gguf.GGUFWriter(str(path), arch)
    _write_metadata(writer)
    reference = {}
    for name, shape in hf_shapes(arch).items():
        w = rng.normal(0, 0.3 if len(shape) == 1 else 0.08, size=shape).astype(
            np.float32
        )
        if len(shape) == 1 and "norm" in name:
            w += 1.0
        stored = w
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            stored = llama_cpp_permute(w, HEADS if "q_proj" in name else KV_HEADS)
        qtype = (
            T.F32 if len(shape) == 1 else (T.Q8_0 if "embed" in name else matrix_type)
        )
        raw = gguf.quants.quantize(stored, qtype)
        values = gguf.quants.dequantize(raw, qtype).reshape(shape)
        if stored is not w:  # undo the permute on the values by index, independently
            order = llama_cpp_permute(
                np.arange(shape[0]), HEADS if "q_proj" in name else KV_HEADS
            )
            values = values[np.argsort(order)]
        reference[name] = values
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        writer.add_tensor(gguf_name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def _write_metadata(writer: gguf.GGUFWriter) -> None:
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * (len(TOKENS) - 3) + [3, 3, 3])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(TOKENS.index("<|im_start|>"))
    writer.add_eos_token_id(TOKENS.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
