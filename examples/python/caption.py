#!/usr/bin/env python3
"""Captions an image or a video file with a gitcap server: once with a unary call, then again
streamed, printing each token as it arrives.

    pip install -r examples/python/requirements.txt
    examples/python/generate.sh
    python3 examples/python/caption.py --server 127.0.0.1:50051 --image photo.jpg
    python3 examples/python/caption.py --server 127.0.0.1:50051 --video clip.mp4

An image goes in one Caption / CaptionStream message. A video file is uploaded in chunks
(UploadVideo / UploadVideoStream), read as it is sent, so files of any size up to the server's
limit work; the server decodes it and samples the model's frame count evenly (or --start/--end).

Prints two lines on stdout:

    caption: <the text the unary call answered>
    stream: <the tokens the streaming call sent, as they arrive>

and the model and version that answered (and a video's frame timestamps) on stderr.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the gitcap server")
    media = parser.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="an image file: JPEG, PNG, WebP or GIF")
    media.add_argument("--video", help="a video file: MP4/MOV, WebM, MKV or AVI (decoded by the server)")
    parser.add_argument("--start", type=float, help="video: sample from this many seconds in")
    parser.add_argument("--end", type=float, help="video: sample up to this many seconds in")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="video: bytes per uploaded chunk")
    parser.add_argument("--model", default="", help="model name, alias or name@version (default: the server's)")
    parser.add_argument("--question", default="", help="ask this about the image instead of captioning it")
    parser.add_argument("--max-new-tokens", type=int, help="most tokens to generate")
    parser.add_argument(
        "--priority",
        choices=["interactive", "batch"],
        default="interactive",
        help="batch: offline work that leaves the server's rows free for interactive callers",
    )
    parser.add_argument("--token", default=os.environ.get("GITCAP_TOKEN"), help="bearer token (or GITCAP_TOKEN)")
    parser.add_argument(
        "--stubs",
        default=os.path.join(HERE, "gen"),
        help="where generate.sh wrote the stubs (default: examples/python/gen)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each call may take")
    return parser.parse_args()


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs)
    try:
        import grpc
        from gitcap.v1 import gitcap_pb2, gitcap_pb2_grpc
    except ImportError as error:
        sys.exit(
            f"caption.py: {error}: install the requirements (pip install -r {HERE}/requirements.txt) "
            f"and generate the stubs ({HERE}/generate.sh {args.stubs})"
        )

    options = gitcap_pb2.GenerationOptions()
    if args.max_new_tokens is not None:
        options.max_new_tokens = args.max_new_tokens
    priority = gitcap_pb2.PRIORITY_BATCH if args.priority == "batch" else gitcap_pb2.PRIORITY_INTERACTIVE
    if args.image:
        with open(args.image, "rb") as f:
            image = f.read()
        request = gitcap_pb2.CaptionRequest(
            model=args.model,
            media=gitcap_pb2.Media(image=image),
            question=args.question,
            options=options,
            priority=priority,
        )
    else:
        sampling = gitcap_pb2.VideoSampling()
        if args.start is not None:
            sampling.start_s = args.start
        if args.end is not None:
            sampling.end_s = args.end
        start = gitcap_pb2.VideoUploadStart(
            model=args.model,
            question=args.question,
            options=options,
            sampling=sampling,
            size_bytes=os.path.getsize(args.video),
            priority=priority,
        )

        def upload():
            """The start message, then the file in chunks, read as they are sent."""
            yield gitcap_pb2.VideoUploadMessage(start=start)
            with open(args.video, "rb") as f:
                while chunk := f.read(args.chunk_bytes):
                    yield gitcap_pb2.VideoUploadMessage(chunk=chunk)

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

    # The server accepts messages up to its configured limit; raise the client's 4 MiB default.
    limits = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(args.server, options=limits) as channel:
        stub = gitcap_pb2_grpc.CaptionerStub(channel)
        try:
            if args.image:
                answer = stub.Caption(request, metadata=metadata, timeout=args.timeout)
                events = lambda: stub.CaptionStream(request, metadata=metadata, timeout=args.timeout)  # noqa: E731
            else:
                answer = stub.UploadVideo(upload(), metadata=metadata, timeout=args.timeout)
                events = lambda: stub.UploadVideoStream(upload(), metadata=metadata, timeout=args.timeout)  # noqa: E731
                print(f"(frames at {[round(t, 3) for t in answer.frame_timestamps_s]} s)", file=sys.stderr)
            print(f"caption: {answer.text}", flush=True)
            print(
                f"(model {answer.model}@{answer.version}, {len(answer.token_ids)} tokens, "
                f"{answer.timings.total_ms:.1f} ms)",
                file=sys.stderr,
            )

            print("stream: ", end="", flush=True)
            streamed = ""
            for event in events():
                kind = event.WhichOneof("event")
                if kind == "token":
                    streamed += event.token.text_delta
                    print(event.token.text_delta, end="", flush=True)
                elif kind == "done":
                    print(flush=True)
                    if event.done.text != streamed:
                        sys.exit(f"caption.py: the streamed tokens {streamed!r} differ from the final text {event.done.text!r}")
        except grpc.RpcError as error:
            sys.exit(f"caption.py: {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
