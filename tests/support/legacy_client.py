"""Run with openai 0.28 (in its own virtualenv): chat and a stream through the wrapper, legacy style."""
import json
import sys

import openai

openai.api_base = sys.argv[1]
openai.api_key = "unused"
model = sys.argv[2]

whole = openai.ChatCompletion.create(model=model, messages=[{"role": "user", "content": "legacy clients still work"}])
pieces = []
finishes = []
for chunk in openai.ChatCompletion.create(model=model, stream=True,
                                          messages=[{"role": "user", "content": "legacy clients still work"}]):
    pieces.append(chunk["choices"][0]["delta"].get("content", ""))
    finishes.append(chunk["choices"][0]["finish_reason"])
print(json.dumps({"version": openai.version.VERSION, "json": whole["choices"][0]["message"]["content"],
                  "stream": "".join(pieces), "finishes": finishes}))
