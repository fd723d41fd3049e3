"""Convert a GGUF file (llama or qwen2 architecture) into an MLX model directory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import mlx.core as mx
from mlx.utils import tree_flatten
from transformers import PreTrainedTokenizerFast
from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

from convert.config_check import build_model, check_config
from convert.errors import ModelFileError
from convert.gguf_blocks import (
    GGUF_GROUP_SIZE,
    NATIVE_BITS,
    NEAREST_BITS,
    Quantized,
    UnsupportedTensorType,
    blocks_to_mlx,
    decode,
    quantize,
)
from convert.gguf_file import CORRUPT_FIX, GGUFFile, GGUFTensor
from convert.json_check import show
from convert.options import ConvertOptions

# GGUF architecture -> (mlx-lm model_type, HF architectures entry, q/k rows permuted).
ARCHS = {
    "llama": ("llama", "LlamaForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
}


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor's fate: its MLX name and, if quantized, bits and group."""

    source: GGUFTensor
    target: str  # MLX parameter name, e.g. model.layers.0.self_attn.q_proj.weight
    bits: int | None
    group_size: int
    exact: bool  # GGUF blocks repacked without rounding

    @property
    def elements(self) -> int:
        return math.prod(self.source.shape)

    def nbytes(self, float_bytes: int) -> int:
        """Bytes written for this tensor, with floats of ``float_bytes`` each."""
        if self.bits is None:
            return self.elements * float_bytes
        groups = self.elements // self.group_size
        return self.elements * self.bits // 8 + 2 * groups * float_bytes


def gguf_config(g: GGUFFile) -> dict:
    """A Hugging Face-style config.json for mlx-lm, built from GGUF metadata.

    Raises:
        ModelFileError: The architecture is not supported or a required key is missing.
    """
    arch = g.architecture
    if arch not in ARCHS:
        raise ModelFileError(
            g.path,
            f"architecture {arch!r} is not supported",
            f"Silica converts GGUF files of the {sorted(ARCHS)} architectures",
        )
    model_type, hf_arch, _ = ARCHS[arch]
    config: dict = {"model_type": model_type, "architectures": [hf_arch]}
    for key, hf_key in GGUF_CONFIG_MAPPING[arch].items():
        if hf_key and f"{arch}.{key}" in g.metadata:
            config[hf_key] = g.metadata[f"{arch}.{key}"]
    required = [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    ]
    if missing := [k for k in required if k not in config]:
        raise ModelFileError(
            g.path, f"metadata lacks {missing}", "The file is incomplete"
        )
    if "token_embd.weight" not in g.tensors:
        raise ModelFileError(g.path, "has no token_embd.weight", CORRUPT_FIX)
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    config.setdefault("rms_norm_eps", 1e-6)
    config["vocab_size"] = g.tensors["token_embd.weight"].shape[0]
    config["tie_word_embeddings"] = "output.weight" not in g.tensors
    _add_rope_scaling(g, arch, config)
    for name in ("bos", "eos"):
        if (token_id := g.metadata.get(f"tokenizer.ggml.{name}_token_id")) is not None:
            config[f"{name}_token_id"] = token_id
    check_config(g.path, config)
    return config


def _add_rope_scaling(g: GGUFFile, arch: str, config: dict) -> None:
    kind = g.metadata.get(f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return
    if kind != "linear":
        raise ModelFileError(g.path, f"RoPE scaling {kind!r} is not supported yet")
    config["rope_scaling"] = {
        "type": "linear",
        "factor": g.metadata.get(f"{arch}.rope.scaling.factor"),
    }


def plan_tensors(
    g: GGUFFile, config: dict, options: ConvertOptions
) -> list[TensorPlan]:
    """Map every GGUF tensor to an mlx-lm parameter and decide its format.

    Raises:
        ModelFileError: A tensor the model needs is missing, or the file has extra ones.
    """
    try:
        targets = dict(tree_flatten(build_model(config).parameters()))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelFileError(g.path, f"metadata describes no valid model ({e})") from e
    name_map = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH[g.architecture.upper()], config["num_hidden_layers"]
    )
    group_size = options.group_size or GGUF_GROUP_SIZE
    plans, used = [], set()
    for target, param in targets.items():
        source = name_map.get_name(target, try_suffixes=(".weight", ".bias"))
        if source not in g.tensors:
            raise ModelFileError(g.path, f"tensor {source!r} (for {target}) is missing")
        if g.tensors[source].shape != tuple(param.shape):
            raise ModelFileError(
                g.path,
                f"tensor {source!r} has shape {g.tensors[source].shape}; the model "
                f"in its metadata needs {tuple(param.shape)}",
                CORRUPT_FIX,
            )
        used.add(source)
        plans.append(_plan(g.tensors[source], target, options, group_size))
    if extra := set(g.tensors) - used:
        raise ModelFileError(
            g.path,
            f"has tensors the {g.architecture} model does not use: {sorted(extra)[:5]}",
        )
    return plans


def _plan(
    t: GGUFTensor, target: str, options: ConvertOptions, group_size: int
) -> TensorPlan:
    if options.dequantize or len(t.shape) != 2 or not target.endswith(".weight"):
        return TensorPlan(t, target, None, group_size, False)
    # Blocks MLX can hold as they are stay bit-exact, whatever --bits asks.
    if native := NATIVE_BITS.get(t.ggml_type):
        return TensorPlan(t, target, native, GGUF_GROUP_SIZE, True)
    bits = options.bits or NEAREST_BITS.get(t.ggml_type)
    if bits is None or t.shape[1] % group_size:
        return TensorPlan(t, target, None, group_size, False)
    return TensorPlan(t, target, bits, group_size, False)


def quantization_config(
    plans: list[TensorPlan], options: ConvertOptions
) -> dict | None:
    """mlx-lm's ``quantization`` entry: a default plus each layer that differs."""
    quantized = [p for p in plans if p.bits is not None]
    if not quantized:
        return None
    counts: dict[tuple[int, int], int] = {}
    for p in quantized:
        counts[(p.bits, p.group_size)] = counts.get((p.bits, p.group_size), 0) + 1
    bits, group_size = max(counts, key=counts.get)
    config: dict = {"group_size": group_size, "bits": bits, "mode": "affine"}
    for p in quantized:
        if (p.bits, p.group_size) != (bits, group_size):
            layer = p.target.removesuffix(".weight")
            config[layer] = {
                "group_size": p.group_size,
                "bits": p.bits,
                "mode": "affine",
            }
    return config


def _unpermute(rows: mx.array, n_head: int) -> mx.array:
    # GGUF stores q/k rows permuted for llama.cpp's RoPE; undo it so mlx-lm's llama
    # loads them as they are.
    shape = rows.shape
    return (
        rows.reshape(n_head, shape[0] // n_head // 2, 2, -1)
        .swapaxes(1, 2)
        .reshape(shape)
    )


def convert_tensor(
    g: GGUFFile, plan: TensorPlan, config: dict, dtype: mx.Dtype
) -> dict[str, mx.array]:
    """Produce the MLX arrays (weight, or weight + scales + biases) for one tensor."""
    t = plan.source
    raw = g.raw(t.name)
    if plan.exact:
        q = blocks_to_mlx(raw, t.ggml_type, dtype)
    else:
        try:
            w = decode(raw, t.ggml_type, t.shape)
        except UnsupportedTensorType as e:
            raise ModelFileError(g.path, f"tensor {t.name!r}: {e}") from e
        q = (
            quantize(w, plan.group_size, plan.bits, dtype)
            if plan.bits
            else w.astype(dtype)
        )
    arrays = (
        {"weight": q.weight, "scales": q.scales, "biases": q.biases}
        if isinstance(q, Quantized)
        else {"weight": q}
    )
    if ARCHS[g.architecture][2] and t.name.endswith(("attn_q.weight", "attn_k.weight")):
        heads = config[
            "num_attention_heads" if "attn_q" in t.name else "num_key_value_heads"
        ]
        arrays = {k: _unpermute(v, heads) for k, v in arrays.items()}
    prefix = plan.target.rsplit(".", 1)[0]
    leaf = plan.target.rsplit(".", 1)[1]
    if "scales" not in arrays:
        return {f"{prefix}.{leaf}": arrays["weight"]}
    return {f"{prefix}.{k}": v for k, v in arrays.items()}


def iter_weights(
    g: GGUFFile, plans: list[TensorPlan], config: dict, dtype: mx.Dtype
) -> Iterator[dict[str, mx.array]]:
    """Yield converted arrays tensor by tensor, so memory stays near one tensor."""
    for plan in plans:
        yield convert_tensor(g, plan, config, dtype)


def save_gguf_tokenizer(src: Path) -> Callable[[Path], None]:
    """A writer of tokenizer files (with the chat template) built from GGUF metadata."""

    def save(dst: Path) -> None:
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(
                str(src.parent), gguf_file=src.name
            )
        except MemoryError:
            raise
        except Exception as e:  # transformers' GGUF tokenizer raises many kinds
            raise ModelFileError(
                src,
                "its tokenizer metadata is incomplete or malformed "
                f"({type(e).__name__}: {show(str(e), 300)})",
            ) from e
        tokenizer.save_pretrained(str(dst))

    return save
