"""The official OpenAI Python client, unmodified, against an edgefleet daemon's /v1 API.

Usage: openai_chat_check.py BASE_URL MODEL
Prints one JSON object: the models listed, a streamed chat (its pieces, finish reason, usage), the same chat
answered whole, and what the client raised for a request the daemon must refuse.
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

out = {"models": [m.id for m in client.models.list().data]}

pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model, messages=messages, stream=True, max_tokens=32, temperature=0,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = {"pieces": pieces, "text": "".join(pieces), "finish_reason": finish, "usage": usage}

whole = client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0)
out["whole"] = {"text": whole.choices[0].message.content, "finish_reason": whole.choices[0].finish_reason,
                "usage": whole.usage.model_dump()}

try:
    client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "hi"}])
    out["refused"] = None
except openai.BadRequestError as e:
    out["refused"] = {"status": e.status_code, "message": e.message}

print(json.dumps(out))
