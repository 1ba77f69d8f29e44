#!/usr/bin/env python3
"""The Batch API side of scripts/bench-batch.sh (standard library only).

    batch_bench.py images DIR N               write N distinct small PNG images into DIR
    batch_bench.py job URL DIR TOKENS         run one job over DIR's images; print its captions/s
    batch_bench.py start URL DIR TOKENS       create a job over DIR's images; print its id
    batch_bench.py cancel URL ID              cancel a job
"""

import base64
import json
import os
import random
import struct
import sys
import time
import urllib.request
import zlib


def png(width, height, rng):
    """A PNG of random blocks (distinct content, so no two images share the feature cache)."""
    color = [rng.randrange(256) for _ in range(3)]
    rows = []
    for y in range(height):
        if y % 8 == 0:
            color = [rng.randrange(256) for _ in range(3)]
        rows.append(b"\x00" + bytes(color) * width)
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as response:
        return json.loads(response.read())


def upload(base, lines):
    boundary = "gitcap-bench-boundary"
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"bench.jsonl\"\r\n\r\n").encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    return request("POST", f"{base}/v1/files", body, {"content-type": f"multipart/form-data; boundary={boundary}"})["id"]


def create(base, directory, tokens):
    lines = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            uri = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        lines.append({"custom_id": name, "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": "tiny", "max_tokens": tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]}})
    file_id = upload(base, lines)
    body = json.dumps({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    batch = request("POST", f"{base}/v1/batches", body.encode(), {"content-type": "application/json"})
    return batch["id"], len(lines)


def main():
    command = sys.argv[1]
    if command == "images":
        directory, n = sys.argv[2], int(sys.argv[3])
        os.makedirs(directory, exist_ok=True)
        rng = random.Random(7)
        for i in range(n):
            with open(os.path.join(directory, f"{i:05d}.png"), "wb") as f:
                f.write(png(64, 64, rng))
    elif command == "job":
        base, directory, tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
        batch_id, lines = create(base, directory, tokens)
        start = time.monotonic()
        while True:
            batch = request("GET", f"{base}/v1/batches/{batch_id}")
            if batch["status"] in ("completed", "failed", "cancelled", "expired"):
                break
            time.sleep(0.05)
        wall = time.monotonic() - start
        print(json.dumps({"lines": lines, "status": batch["status"], "request_counts": batch["request_counts"],
                          "wall_s": wall, "captions_per_s": batch["request_counts"]["completed"] / wall}))
    elif command == "start":
        print(create(sys.argv[2], sys.argv[3], int(sys.argv[4]))[0])
    elif command == "cancel":
        batch = request("GET", f"{sys.argv[2]}/v1/batches/{sys.argv[3]}")
        if batch["status"] != "in_progress":
            raise SystemExit(f"the job had ended ({batch['status']}) before the interactive runs did, so some ran "
                             "without it: use more --lines (or fewer --runs)")
        request("POST", f"{sys.argv[2]}/v1/batches/{sys.argv[3]}/cancel", b"{}", {"content-type": "application/json"})
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
