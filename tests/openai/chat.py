#!/usr/bin/env python3
"""Talks to gitcap's OpenAI-compatible API with the official `openai` SDK, as a chat UI would,
and prints what it got as one JSON object (tests/openai.rs compares it with the gRPC answers).

    python chat.py BASE_URL TOKEN IMAGE VIDEO
"""

import base64
import json
import sys

import openai


def data_uri(path, mime):
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


def error(call):
    """The SDK's exception for a call that must fail: its class, HTTP status and error body."""
    try:
        call()
    except openai.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "param": (e.body or {}).get("param")}
    return None


def main():
    base_url, token, image_path, video_path = sys.argv[1:5]
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)
    image = {"type": "image_url", "image_url": {"url": data_uri(image_path, "image/png")}}
    video = {"type": "video_url", "video_url": {"url": data_uri(video_path, "video/mp4")}}
    out = {}

    # A caption of an image, whole.
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [image]}], max_tokens=8)
    out["caption"] = answer.choices[0].message.content
    out["caption_finish"] = answer.choices[0].finish_reason
    out["caption_usage"] = answer.usage.completion_tokens
    out["caption_cached"] = answer.usage.prompt_tokens_details.cached_tokens

    # The same, streamed, with the usage at the end.
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [image]}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    out["stream_deltas"] = deltas
    out["stream_finish"] = finish
    out["stream_usage"] = usage

    # A follow-up question: the chat UI sends the whole history again.
    history = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Describe this."}, image]},
        {"role": "assistant", "content": out["caption"]},
        {"role": "user", "content": "what is in the picture?"},
    ]
    answer = client.chat.completions.create(model="tiny", messages=history, max_tokens=6)
    out["follow_up"] = answer.choices[0].message.content
    out["follow_up_cached"] = answer.usage.prompt_tokens_details.cached_tokens
    out["follow_up_prompt"] = answer.usage.prompt_tokens

    # A video file.
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [video]}], max_tokens=8)
    out["video"] = answer.choices[0].message.content

    # Sampling: two choices with a seed, and logprobs.
    answer = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [image]}],
        max_tokens=5,
        temperature=1.2,
        seed=7,
        n=2,
        logprobs=True,
        top_logprobs=2,
    )
    out["sampled"] = [c.message.content for c in answer.choices]
    out["logprobs"] = [[(t.token, t.logprob, len(t.top_logprobs)) for t in c.logprobs.content] for c in answer.choices]
    # gitcap's own options as extra fields: beam search.
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": [image]}], max_tokens=8, extra_body={"num_beams": 3}
    )
    out["beams"] = answer.choices[0].message.content

    # Mistakes, each answered with OpenAI's error shape.
    out["errors"] = {
        "unsupported": error(lambda: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": [image]}], frequency_penalty=0.5)),
        "no_media": error(lambda: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}])),
        "unknown_model": error(lambda: client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": [image]}])),
        "bad_option": error(lambda: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": [image]}], top_p=1.5)),
        "wrong_token": error(lambda: openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
                             .chat.completions.create(model="tiny", messages=[{"role": "user", "content": [image]}])),
    }
    out["models"] = sorted(m.id for m in client.models.list().data)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
