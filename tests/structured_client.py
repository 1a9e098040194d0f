#!/usr/bin/env python3
"""Structured output through the official `openai` client against a live `ballast serve`
(run by tests/structured.rs): `parse()` into a Pydantic model, `json_object`, 100 seeded
generations at temperature 1 that all validate against their schema (jsonschema), and the
400s of bad schemas.

Usage: structured_client.py BASE_URL MODEL
Exits non-zero with a message on the first failed check.
"""
import concurrent.futures
import enum
import json
import sys
from typing import List, Optional

import jsonschema
import openai
import pydantic

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=40)
    zip: str = pydantic.Field(pattern=r"^[0-9]{5}$")


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    age: int
    favorite: Color
    address: Address
    pets: List[str] = pydantic.Field(max_length=3)
    nickname: Optional[str] = None


# parse(): the SDK sends a strict json_schema and validates the answer into the model.
r = client.chat.completions.parse(
    model=model,
    messages=[{"role": "user", "content": "Describe a person who lives in a city, as JSON."}],
    response_format=Person,
    max_tokens=200,
    temperature=0,
)
choice = r.choices[0]
check(choice.finish_reason == "stop", f"parse() finished by the grammar: {choice.finish_reason}")
p = choice.message.parsed
check(isinstance(p, Person) and isinstance(p.favorite, Color) and isinstance(p.address, Address), f"parsed into the model: {p!r}")
check(len(p.address.zip) == 5 and len(p.pets) <= 3, f"the constraints held: {p!r}")

# json_object: any JSON object.
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Reply with a JSON object with one key, \"name\", whose value is your name."}],
    response_format={"type": "json_object"},
    max_tokens=400,
    temperature=0,
)
check(r.choices[0].finish_reason == "stop", f"json_object closed its object: {r.choices[0].finish_reason}")
check(isinstance(json.loads(r.choices[0].message.content), dict), f"json_object gives an object: {r.choices[0].message.content!r}")

# 100 seeded generations at temperature 1, ten requests of n = 10 at once: every one valid.
schema = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["new", "old", "odd"]}, "minItems": 1, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["title", "rating", "tags", "ok"],
    "additionalProperties": False,
}


def sample(seed):
    return client.completions.create(
        model=model,
        prompt="A review, as JSON:",
        max_tokens=120,
        temperature=1.0,
        seed=seed,
        n=10,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "review", "schema": schema, "strict": True}}},
    )


with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
    results = list(pool.map(sample, range(10)))
outputs = [c for r in results for c in r.choices]
check(len(outputs) == 100, f"{len(outputs)} generations")
for c in outputs:
    if c.finish_reason != "stop":
        sys.exit(f"FAILED: a constrained generation ended by {c.finish_reason}: {c.text!r}")
    try:
        jsonschema.validate(json.loads(c.text), schema)
    except Exception as e:  # noqa: BLE001 - any failure is the check failing
        sys.exit(f"FAILED: an output does not validate: {c.text!r}: {e}")
check(True, "100 seeded generations at temperature 1 all validate against their schema")
check(len({c.text for c in outputs}) > 10, "and they differ (sampling, not one forced answer)")

# Bad schemas are a 400 naming response_format, before anything runs.
for bad in [
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "wrongtype"}}}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}},
    {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {"type": "object"}}},
    {"type": "xml"},
]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], response_format=bad, max_tokens=5)
        sys.exit(f"FAILED: {bad} was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "response_format", f"400 naming response_format for {json.dumps(bad)[:60]}")

print("all structured output checks passed")
