"""Pull a catalog model, convert it to 4-bit MLX, and answer a question with mlx-lm.

Run: python examples/convert_and_generate.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlx_lm import generate, load
from mlx_lm.sample_utils import make_sampler

from convert import ConvertOptions, convert_model

out = Path(sys.argv[1] if len(sys.argv) > 1 else "models/smollm2-135m-instruct-4bit")
if not out.exists():
    result = convert_model("smollm2-135m-instruct", out, ConvertOptions(bits=4))
    print(result.plan.render())

model, tokenizer = load(str(out))
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(generate(model, tokenizer, prompt, max_tokens=40, sampler=make_sampler(0.0)))
