#!/usr/bin/env python3
"""Talks to gitcap's Responses API (/v1/responses) with the official `openai` SDK, and prints
what it got as one JSON object (tests/responses_clients.rs compares it with the transformers
goldens and the server's metrics).

    python responses.py BASE_URL TOKEN PHOTO SHAPES
"""

import base64
import json
import sys

import openai
import pydantic
from openai.types.responses import Response, ResponseStreamEvent

# The SDK builds its objects without validating them; these check every field received against
# its types, so a field gitcap writes in the wrong shape fails the test.
EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
invalid = []


def check(model, received):
    """Validates what the server sent (the fields it set) against `model`'s type."""
    try:
        model.validate_python(received) if isinstance(model, pydantic.TypeAdapter) else model.model_validate(received)
    except pydantic.ValidationError as e:
        invalid.append(str(e))


def data_uri(path, mime):
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


def error(call):
    """The SDK's exception for a call that must fail: its class, HTTP status and error body."""
    try:
        call()
    except openai.APIStatusError as e:
        body = e.body or {}
        return {"class": type(e).__name__, "status": e.status_code, "param": body.get("param"), "code": body.get("code")}
    return None


def main():
    base_url, token, photo_path, shapes_path = sys.argv[1:5]
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)
    photo = {"type": "input_image", "image_url": data_uri(photo_path, "image/jpeg"), "detail": "auto"}
    shapes = {"type": "input_image", "image_url": data_uri(shapes_path, "image/png"), "detail": "auto"}
    out = {}

    # A caption, whole; the system prompt goes in `instructions`.
    answer = client.responses.create(
        model="tiny",
        instructions="You are a helpful assistant.",
        input=[{"role": "user", "content": [photo]}],
        max_output_tokens=12,
    )
    check(Response, answer.to_dict())
    out["caption"] = {
        "id": answer.id,
        "text": answer.output_text,
        "status": answer.status,
        "object": answer.object,
        "usage": [answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.total_tokens],
    }

    # A follow-up question about the same photo: no media, only the previous response's id.
    follow_up = client.responses.create(
        model="tiny", previous_response_id=answer.id, input="what is in the picture?", max_output_tokens=12
    )
    check(Response, follow_up.to_dict())
    out["follow_up"] = {
        "text": follow_up.output_text,
        "previous_response_id": follow_up.previous_response_id,
        "cached_tokens": follow_up.usage.input_tokens_details.cached_tokens,
    }

    # Another image, streamed: every event, in order.
    events = []
    stream = client.responses.create(
        model="tiny", input=[{"role": "user", "content": [shapes]}], max_output_tokens=12, stream=True
    )
    for event in stream:
        check(EVENT, event.to_dict())
        events.append({"type": event.type, "sequence_number": event.sequence_number, "delta": getattr(event, "delta", None)})
        if event.type in ("response.completed", "response.incomplete"):
            out["stream_final"] = {"text": event.response.output_text, "status": event.response.status}
    out["stream_events"] = events

    # Stored: retrieved, then deleted (and then not found).
    retrieved = client.responses.retrieve(answer.id)
    check(Response, retrieved.to_dict())
    out["retrieved"] = retrieved.output_text
    client.responses.delete(answer.id)
    out["errors"] = {
        "deleted": error(lambda: client.responses.retrieve(answer.id)),
        "previous_deleted": error(lambda: client.responses.create(
            model="tiny", previous_response_id=answer.id, input="and now?")),
        "tools": error(lambda: client.responses.create(
            model="tiny", input=[{"role": "user", "content": [photo]}],
            tools=[{"type": "function", "name": "f", "parameters": {}, "strict": True}])),
        "json_format": error(lambda: client.responses.create(
            model="tiny", input=[{"role": "user", "content": [photo]}], text={"format": {"type": "json_object"}})),
        "no_media": error(lambda: client.responses.create(model="tiny", input="hello")),
        "unknown_model": error(lambda: client.responses.create(
            model="no-such-model", input=[{"role": "user", "content": [photo]}])),
        "wrong_token": error(lambda: openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
                             .responses.create(model="tiny", input=[{"role": "user", "content": [photo]}])),
    }
    out["invalid"] = invalid
    print(json.dumps(out))


if __name__ == "__main__":
    main()
