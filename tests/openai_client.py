#!/usr/bin/env python3
"""The official `openai` Python client against a live `ballast serve` (run by tests/server.rs).

Usage: openai_client.py BASE_URL MODEL
Exits non-zero with a message on the first failed check.
"""
import json
import sys
import urllib.request

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


# Models.
ids = [m.id for m in client.models.list().data]
check(ids == [model], f"/v1/models lists the served model ({ids})")

# Completions, greedy: the golden first token.
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
check(c.choices[0].text.startswith(" Paris"), f"completion text {c.choices[0].text!r}")
check(c.choices[0].finish_reason == "length", "finish_reason length")
check(c.usage.prompt_tokens == 5 and c.usage.completion_tokens == 6 and c.usage.total_tokens == 11, f"usage {c.usage}")

# Token-id prompts give the same thing.
c2 = client.completions.create(model=model, prompt=[504, 3575, 282, 4649, 314], max_tokens=6, temperature=0)
check(c2.choices[0].text == c.choices[0].text, "a token-id prompt equals its text")

# Chat, non-streaming, ends at the end of turn.
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=40, temperature=0)
msg = r.choices[0].message
check(msg.role == "assistant" and "Paris" in msg.content, f"chat answer {msg.content!r}")
check(r.choices[0].finish_reason == "stop", "chat stops at end of turn")
check("<|im_end|>" not in msg.content, "no stop token in the text")

# Chat, streaming with usage: deltas join to the non-streamed answer.
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=40, temperature=0,
    stream=True, stream_options={"include_usage": True},
)
text, finish, usage, roles = "", None, None, 0
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        roles += ch.delta.role == "assistant"
        text += ch.delta.content or ""
        finish = ch.finish_reason or finish
check(text == msg.content, f"streamed chat equals non-streamed ({text!r})")
check(finish == "stop" and roles == 1, "one role delta, finish reason stop")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"include_usage chunk {usage}")

# Streaming completions.
parts = [ch.choices[0].text for ch in client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if ch.choices]
check("".join(parts) == c.choices[0].text, "streamed completion equals non-streamed")

# n > 1 with a seed: reproducible, and choices differ.
kw = dict(model=model, prompt="My favourite animal is", max_tokens=12, temperature=1.0, n=3, seed=7)
a = client.completions.create(**kw)
b = client.completions.create(**kw)
check(len(a.choices) == 3 and sorted(x.index for x in a.choices) == [0, 1, 2], "three choices")
check([x.text for x in a.choices] == [x.text for x in b.choices], "the same seed reproduces every choice")
check(len({x.text for x in a.choices}) > 1, "choices differ")
check(a.usage.completion_tokens == 36, f"usage counts all choices ({a.usage.completion_tokens})")

# Stop strings: cut before the match, finish reason stop.
full = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
s = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=["6,"])
check(s.choices[0].text == full[: full.index("6,")] and s.choices[0].finish_reason == "stop", f"stop string ({s.choices[0].text!r})")

# Logprobs: completions (top alternatives) and chat.
lp = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=4, temperature=0, logprobs=3).choices[0].logprobs
check(len(lp.tokens) == 4 and len(lp.token_logprobs) == 4 and all(len(t) == 3 for t in lp.top_logprobs), "completion logprobs")
check(all(v <= 0 for v in lp.token_logprobs), "log-probabilities are ≤ 0")
check(all(max(t.values()) == v for t, v in zip(lp.top_logprobs, lp.token_logprobs)), "greedy picks the top alternative")
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
content = r.choices[0].logprobs.content
check(len(content) >= 1 and all(len(e.top_logprobs) == 2 for e in content), "chat logprobs")

# Errors: OpenAI's shape, the right status, the bad field named.
try:
    client.completions.create(model=model, prompt="x", max_tokens=4, temperature=-1)
    check(False, "temperature -1 is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "temperature", f"400 names temperature ({e.body})")
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    check(False, "an unknown model is refused")
except openai.NotFoundError as e:
    check(e.status_code == 404 and e.body.get("param") == "model", "404 for an unknown model")
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=4, extra_body={"priority": "urgent"})
    check(False, "an unknown priority is refused")
except openai.BadRequestError as e:
    check(e.body.get("param") == "priority", "400 names priority")
try:
    client.completions.create(model=model, prompt="x " * 9000, max_tokens=4)
    check(False, "a prompt longer than the context is refused")
except openai.BadRequestError as e:
    check(e.body.get("param") == "prompt", f"400 names prompt ({e.body.get('message')})")

# Priority accepted in the body and reported back.
raw = client.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=2, extra_body={"priority": "high"})
check(raw.headers.get("x-ballast-priority") == "high", "the class is echoed in x-ballast-priority")


def post(path, body):
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


tok = post("/tokenize", {"prompt": "The capital of France is"})
check(tok["tokens"] == [504, 3575, 282, 4649, 314] and tok["count"] == 5, "/tokenize")
check(post("/detokenize", {"tokens": tok["tokens"]})["prompt"] == "The capital of France is", "/detokenize")
print("all openai client checks passed")
