"""Talk to `silica serve` with the official openai client: streaming chat, completions.

Start the server first (it converts the model on first use):
    silica serve --model smollm2-135m-instruct
Then run: python examples/openai_client.py [BASE_URL]
"""

from __future__ import annotations

import sys

from openai import OpenAI

MODEL = "smollm2-135m-instruct"

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
# Any key works unless the server was started with --api-key.
client = OpenAI(base_url=base_url, api_key="not-needed")

print("models:", [m.id for m in client.models.list().data])

stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=64,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
for event in stream:
    if event.choices:
        print(event.choices[0].delta.content or "", end="", flush=True)
    elif event.usage:
        print(f"\n[{event.usage.completion_tokens} tokens]")

completion = client.completions.create(
    model=MODEL,
    prompt="Once upon a time",
    max_tokens=100,
    n=1,
    stop=None,
    temperature=0.7,
)
print(completion.choices[0].text)
print(completion.usage)
