#!/usr/bin/env python3
"""Tool calling through the official `openai` client against a live `ballast serve` of a model
whose chat template offers tools (run by tests/tools.rs on Qwen2.5-Coder-0.5B-Instruct):
`tool_choice` auto, required and named, streamed and not (the SDK's own stream assembly),
a call → tool answer → reply round trip, `none`, `parallel_tool_calls`, the SDK's
`pydantic_function_tool` with `parse()`, 20 seeded required calls at temperature 1 whose
arguments all validate against their schemas (jsonschema), and the 400s of bad tools.

Usage: tools_client.py BASE_URL MODEL
Exits non-zero with a message on the first failed check.
"""
import concurrent.futures
import json
import sys

import jsonschema
import openai
import pydantic

base, model = sys.argv[1], sys.argv[2]
# A 429 with Retry-After is how this server answers a moment of overload (the test binary
# runs other tests beside this one on two cores): the SDK waits and retries, as clients do.
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=4, timeout=300)


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z_]+$"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time in a time zone.", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def valid_call(call):
    """A call of an offered function whose arguments validate against its schema."""
    if call.type != "function" or call.function.name not in SCHEMAS or not call.id.startswith("call_"):
        return False
    try:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        return True
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False


def create(**kw):
    args = dict(model=model, messages=ASK, tools=TOOLS, temperature=0, max_tokens=120)
    args.update(kw)
    return client.chat.completions.create(**args)


# auto: the model decides to call, and the call is read out of its text.
r = create()
c = r.choices[0]
calls = c.message.tool_calls or []
check(c.finish_reason == "tool_calls", f"auto: finish_reason tool_calls, got {c.finish_reason} ({c.message.content!r})")
check(len(calls) == 1 and calls[0].function.name == "get_weather", f"auto: one get_weather call: {calls}")
check(json.loads(calls[0].function.arguments).get("city") == "Paris", f"auto: the city is Paris: {calls[0].function.arguments}")
check(c.message.content is None, f"auto: no content beside the call: {c.message.content!r}")
auto_call = calls[0]

# Streamed, the SDK assembles the same call from delta.tool_calls chunks.
with client.chat.completions.stream(model=model, messages=ASK, tools=TOOLS, temperature=0, max_tokens=120) as stream:
    final = stream.get_final_completion()
sc = final.choices[0]
check(sc.finish_reason == "tool_calls", f"streamed: finish_reason tool_calls, got {sc.finish_reason}")
s_calls = sc.message.tool_calls or []
check(
    [(x.function.name, x.function.arguments) for x in s_calls] == [(auto_call.function.name, auto_call.function.arguments)],
    f"streamed: the SDK assembled the same call: {s_calls}",
)
chunks = list(create(stream=True))
deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
tc = [d.tool_calls[0] for d in deltas if d.tool_calls]
check(len(tc) == 1 and tc[0].index == 0 and tc[0].id.startswith("call_") and tc[0].type == "function", f"streamed: one whole call chunk: {tc}")
check(all(d.content is None for d in deltas), "streamed: no content chunks around the call")

# required: some call of the offered functions, arguments valid by construction.
r = create(tool_choice="required", messages=[{"role": "user", "content": "Hello!"}])
c = r.choices[0]
check(c.finish_reason == "tool_calls" and c.message.tool_calls and all(valid_call(x) for x in c.message.tool_calls), f"required: valid calls even for a greeting: {c.message.tool_calls}")

# A named function is called even when the question is about something else.
r = create(tool_choice={"type": "function", "function": {"name": "get_time"}})
c = r.choices[0]
calls = c.message.tool_calls or []
check(len(calls) == 1 and calls[0].function.name == "get_time" and valid_call(calls[0]), f"named: one valid get_time call: {calls}")

# parallel_tool_calls false: never more than one call.
r = create(tool_choice="required", parallel_tool_calls=False, messages=[{"role": "user", "content": "Weather in Paris, Rome and Oslo?"}], n=3, temperature=1, seed=7)
check(all(len(ch.message.tool_calls or []) == 1 for ch in r.choices), f"parallel_tool_calls=false: one call per choice: {[ch.message.tool_calls for ch in r.choices]}")

# The round trip: the call, the tool's answer, then a reply that uses it.
for streamed in (False, True):
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [auto_call.model_dump()]},
        {"role": "tool", "tool_call_id": auto_call.id, "content": json.dumps({"temperature": 21, "unit": "celsius", "sky": "sunny"})},
    ]
    if streamed:
        with client.chat.completions.stream(model=model, messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=80) as stream:
            reply = stream.get_final_completion().choices[0]
    else:
        reply = create(messages=messages, tool_choice="none", max_tokens=80).choices[0]
    text = reply.message.content or ""
    check(reply.finish_reason in ("stop", "length") and not reply.message.tool_calls, f"round trip (streamed={streamed}): a text reply: {reply.finish_reason}")
    check("21" in text, f"round trip (streamed={streamed}): the reply uses the tool's answer: {text!r}")

# none: text only, no call.
r = create(tool_choice="none", max_tokens=30)
check(not r.choices[0].message.tool_calls and r.choices[0].message.content, f"none: text and no calls: {r.choices[0].message.content!r}")


# The SDK's strict Pydantic tools, parsed back into the model.
class GetWeather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=40)
    unit: str = pydantic.Field(pattern="^(celsius|fahrenheit)$")


r = client.chat.completions.parse(
    model=model,
    messages=ASK,
    tools=[openai.pydantic_function_tool(GetWeather)],
    tool_choice="required",
    temperature=0,
    max_tokens=120,
)
calls = r.choices[0].message.tool_calls or []
check(len(calls) >= 1 and isinstance(calls[0].function.parsed_arguments, GetWeather), f"parse(): arguments parsed into the Pydantic model: {calls}")

# 20 seeded required calls at temperature 1, concurrently: every one valid.
prompts = ["What's the weather in Tokyo?", "What time is it in Berlin?", "Is it raining in London?", "Time in New York, please."]


def seeded(seed):
    r = create(tool_choice="required", temperature=1.0, seed=seed, messages=[{"role": "user", "content": prompts[seed % len(prompts)]}])
    return r.choices[0]


with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(seeded, range(20)))
bad = [(r.finish_reason, r.message.tool_calls) for r in results if r.finish_reason != "tool_calls" or not all(valid_call(x) for x in r.message.tool_calls or [None])]
check(not bad, f"20 seeded required calls at temperature 1 all valid: {bad}")
check(seeded(3).message.tool_calls[0].function.arguments == results[3].message.tool_calls[0].function.arguments, "a seed reproduces its call")

# Bad tools are 400s naming the place, before anything is queued.
bad_requests = [
    (dict(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0].function.name"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]), "tools"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}}]), "tools"),
    (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tools=[TOOLS[0], TOOLS[0]]), "tools"),
    (dict(tool_choice="required", response_format={"type": "json_object"}), "tool_choice"),
    (dict(messages=ASK + [{"role": "tool", "tool_call_id": "call_unknown", "content": "x"}]), "messages[1].tool_call_id"),
    (dict(messages=ASK + [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]}]), "messages[1].tool_calls[0].function.arguments"),
]
for kw, param in bad_requests:
    try:
        create(**kw)
        check(False, f"{kw} refused")
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(body.get("param") == param, f"400 names {param}: {body.get('param')} ({body.get('message')})")

print("all tool calling checks passed")
