#!/usr/bin/env python3
"""Runs a batch through gitcap's Files and Batches API with the official `openai` SDK, as a data
team would, and prints what it got as one JSON object (tests/batch_clients.rs compares it with
the gRPC answers).

    python sdk.py BASE_URL TOKEN INPUT_JSONL
"""

import json
import sys
import time

import openai


def main():
    base_url, token, input_path = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)
    with open(input_path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"dataset": "fixtures"},
    )
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the batch did not end in 120 s: {batch}")
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)

    def lines(file_id):
        if not file_id:
            return []
        return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]

    listed = [b.id for b in client.batches.list(limit=1)]
    files = sorted(f.purpose for f in client.files.list())
    deleted = client.files.delete(uploaded.id).deleted
    try:
        client.files.retrieve(uploaded.id)
        gone = None
    except openai.NotFoundError as e:
        gone = e.status_code
    print(json.dumps({
        "batch": batch.model_dump(),
        "output": lines(batch.output_file_id),
        "errors": lines(batch.error_file_id),
        "listed": listed,
        "files": files,
        "deleted": deleted,
        "gone": gone,
    }))


if __name__ == "__main__":
    main()
