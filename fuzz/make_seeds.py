#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus-seeds/<target>/), a few KB in all.

Needs Pillow (scripts/requirements-fixtures.txt has it); run from the repository root:
    python3 fuzz/make_seeds.py
decode_image: tiny images in each format and flavour the decoder handles (JPEG baseline,
progressive, restart markers, grayscale, CMYK, EXIF orientation; PNG gray/palette/16-bit/
interlaced/RGBA; GIF still and animated; WebP lossy, lossless, animated).
raw_frames: `arbitrary`-encoded inputs are opaque, so its seeds are raw bytes that libFuzzer
mutates from (a few small RGB buffers).
request_validation: protobuf encodings of each request kind, hand-encoded here (first byte =
which message, as in the target).
oip_infer: Open Inference Protocol ModelInferRequest messages, hand-encoded here (an image with
a question and parameters, raw frames, typed contents, a video, requested outputs).
openai_chat: chat-completions JSON bodies (an image, frames, a video, a follow-up, options,
parameters gitcap cannot honour), with a tiny PNG made here without Pillow.
responses_request: Responses API JSON bodies (an image, frames, a video file, a follow-up by
previous_response_id, options, parameters gitcap cannot honour, refused items).
batch_line: Batch API input lines (first byte: even = a chat completions job, odd = a Responses
job), valid and near-valid.
"""
import io
import os
import shutil
import struct

from PIL import Image

ROOT = "fuzz/corpus-seeds"


def out(target, name, data):
    os.makedirs(f"{ROOT}/{target}", exist_ok=True)
    with open(f"{ROOT}/{target}/{name}", "wb") as f:
        f.write(data)


def image(w, h, mode="RGB"):
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 37) % 256, (y * 59) % 256, ((x + y) * 23) % 256) for y in range(h) for x in range(w)])
    return im.convert(mode)


def save(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def decode_image_seeds():
    for name in ["prog420_13x11.jpg", "rst422_21x9.jpg", "gray_prog_9x14.jpg", "orient8_10x6.jpg"]:
        shutil.copy(f"server/src/media/testdata/{name}", f"{ROOT}/decode_image/{name}")
    exif = Image.Exif()
    exif[0x0112] = 6
    out("decode_image", "baseline_exif6_5x3.jpg", save(image(5, 3), "JPEG", quality=70, exif=exif))
    out("decode_image", "cmyk_4x4.jpg", save(image(4, 4, "CMYK"), "JPEG", quality=70))
    out("decode_image", "rgb_6x4.png", save(image(6, 4), "PNG"))
    out("decode_image", "gray_5x5.png", save(image(5, 5, "L"), "PNG"))
    out("decode_image", "gray16_3x3.png", save(image(3, 3, "L").convert("I;16"), "PNG"))
    pal = image(4, 4, "P")
    out("decode_image", "palette_trns_4x4.png", save(pal, "PNG", transparency=0))
    out("decode_image", "rgba_interlaced_5x4.png", save(image(5, 4, "RGBA"), "PNG", interlace=1))
    out("decode_image", "still_4x3.gif", save(image(4, 3), "GIF"))
    frames = [image(4, 4), image(4, 4).transpose(Image.Transpose.ROTATE_90)]
    out("decode_image", "anim_4x4.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40))
    out("decode_image", "lossy_6x4.webp", save(image(6, 4), "WEBP", quality=50))
    out("decode_image", "lossless_rgba_5x3.webp", save(image(5, 3, "RGBA"), "WEBP", lossless=True))
    out("decode_image", "anim_4x4.webp",
        save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40, lossless=True))
    # Inputs that crashed the target once (see fuzz/README.md, Findings), kept as regressions.
    out("decode_image", "regress_libjpeg_fatal_error.jpg", bytes.fromhex(
        "ffd8ffc2000b08000e0009010111 00ffda000801013f1039daffd9".replace(" ", "")))
    out("decode_image", "regress_gif_frame_beyond_screen.gif", bytes.fromhex(
        "474946383961040004008000000000 00ffffff2c00000000307530750002024c01003b".replace(" ", "")))


def raw_frames_seeds():
    # Bytes libFuzzer reads through `arbitrary`: small buffers with a valid-looking prefix.
    out("raw_frames", "two_frames", bytes([2, 0, 0, 0, 2, 0, 0, 0, 1]) + bytes(range(48)) + bytes([6, 3, 1, 1]))
    out("raw_frames", "chunks", bytes([1, 4, 0, 0, 0, 1, 0, 0, 0, 1]) + bytes(range(12)) + bytes([9, 0, 6, 1] * 8))


def varint(n):
    b = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            b.append(byte | 0x80)
        else:
            b.append(byte)
            return bytes(b)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def options():
    return (field(1, 0, varint(20)) + field(3, 0, varint(3)) + field(4, 5, struct.pack("<f", 1.0))
            + field(6, 0, varint(1)) + field(7, 5, struct.pack("<f", 0.7)) + field(8, 0, varint(50))
            + field(9, 5, struct.pack("<f", 0.9)) + field(10, 0, varint(42))
            + field(11, 5, struct.pack("<f", 1.2)) + field(12, 0, varint(3)))


def request_validation_seeds():
    png = save(image(2, 2), "PNG")
    raw = field(3, 2, field(1, 0, varint(2)) + field(2, 0, varint(1)) + field(3, 2, bytes(range(6))))
    media_image = field(2, 2, field(1, 2, png))
    media_frames = field(2, 2, field(2, 2, field(1, 2, png) + field(1, 2, png)))
    media_raw = field(2, 2, raw)
    q = field(3, 2, b"what is this?")
    out("request_validation", "caption_image", bytes([0]) + field(1, 2, b"tiny") + media_image + q + field(4, 2, options()))
    out("request_validation", "caption_frames", bytes([0]) + media_frames)
    out("request_validation", "caption_raw", bytes([0]) + media_raw + field(4, 2, field(1, 0, varint(0))))
    out("request_validation", "score_labels",
        bytes([1]) + media_image + field(3, 2, b"a cat") + field(3, 2, b" a dog ") + field(4, 2, b"a photo of"))
    start = field(1, 2, field(2, 2, b"what happens?") + field(3, 2, options()) + field(4, 0, varint(2)))
    chunk = lambda data, end: field(2, 2, field(1, 2, data) + (field(2, 0, varint(1)) if end else b""))
    upload = [start, chunk(png[:20], False), chunk(png[20:], True), chunk(png, True)]
    out("request_validation", "upload", bytes([2]) + b"".join(varint(len(m)) + m for m in upload))
    out("request_validation", "live_start", bytes([3]) + field(1, 2, field(2, 2, b"q") + field(4, 0, varint(4))))
    out("request_validation", "options", bytes([4]) + options())


def tiny_png():
    """A 2x2 RGB PNG, written by hand (no Pillow needed for this target's seeds)."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = [[(200, 30, 30), (30, 200, 30)], [(30, 30, 200), (240, 240, 240)]]
    rows = b"".join(b"\0" + b"".join(bytes(p) for p in row) for row in pixels)
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def openai_chat_seeds():
    import base64
    import json

    uri = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    image = {"type": "image_url", "image_url": {"url": uri}}
    ask = {"type": "text", "text": "what is it?"}

    def body(name, **request):
        request.setdefault("model", "tiny")
        out("openai_chat", name, json.dumps(request).encode())

    body("caption", messages=[{"role": "user", "content": [image]}])
    body("question_options", messages=[{"role": "user", "content": [image, ask]}], max_tokens=8, temperature=0.7,
         top_p=0.9, seed=3, n=2, stop=["."], logprobs=True, top_logprobs=2, stream=True,
         stream_options={"include_usage": True}, service_tier="flex", num_beams=2, repetition_penalty=1.2)
    body("frames", messages=[{"role": "user", "content": [image, image, image]}])
    body("video", messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAAGGZ0eXBpc29t"}}]}])
    body("follow_up", messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [image]},
        {"role": "assistant", "content": "a square"},
        {"role": "user", "content": "what colour?"}])
    body("unsupported", messages=[{"role": "user", "content": [image]}], frequency_penalty=0, presence_penalty=0.0,
         tools=[], tool_choice="none", response_format={"type": "text"}, modalities=["text"], best_of=1, echo=False)
    body("url", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])


def responses_request_seeds():
    import base64
    import json

    uri = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    image = {"type": "input_image", "image_url": uri}
    ask = {"type": "input_text", "text": "what is it?"}

    def body(name, **request):
        request.setdefault("model", "tiny")
        out("responses_request", name, json.dumps(request).encode())

    body("caption", input=[{"role": "user", "content": [image]}])
    body("question_options", input=[{"type": "message", "role": "user", "content": [image, ask]}],
         instructions="be brief", max_output_tokens=8, temperature=0.7, top_p=0.9, seed=3, top_logprobs=2,
         include=["message.output_text.logprobs"], stream=True, store=False, service_tier="flex", user="u",
         metadata={"k": "v"}, text={"format": {"type": "text"}}, num_beams=2, repetition_penalty=1.2)
    body("frames", input=[{"role": "user", "content": [image, image, image]}])
    body("video_file", input=[{"role": "user", "content": [
        {"type": "input_file", "file_data": "data:video/mp4;base64,AAAAGGZ0eXBpc29t"}, ask]}])
    body("image_file", input=[{"role": "user", "content": [{"type": "input_file", "file_data": uri}]}])
    body("video_url", input=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}]}])
    body("follow_up", input="what colour?", previous_response_id="resp_0123")
    body("conversation", input=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [image]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "a square"}]},
        {"role": "user", "content": "what colour?"}])
    body("unsupported", input=[{"role": "user", "content": [image]}], tools=[], tool_choice="auto", reasoning={},
         background=False, frequency_penalty=0, presence_penalty=0.0, text={"format": {"type": "json_schema"}})
    body("refused_item", input=[{"type": "function_call", "name": "f"}, {"role": "user", "content": [
        {"type": "input_image", "file_id": "file-1"}, {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE"}]}])


def batch_line_seeds():
    import base64
    import json

    uri = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    chat = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "what is it?"}]}]}
    responses = {"model": "tiny", "max_output_tokens": 8, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": uri}, {"type": "input_text", "text": "what is it?"}]}]}

    def line(name, selector, **fields):
        out("batch_line", name, selector + json.dumps(fields).encode())

    line("chat", b"0", custom_id="a", method="POST", url="/v1/chat/completions", body=chat)
    line("responses", b"1", custom_id="b", method="POST", url="/v1/responses", body=responses)
    line("responses_store_stream", b"1", custom_id="c", method="POST", url="/v1/responses",
         body=dict(responses, store=True, stream=True))
    line("wrong_endpoint", b"0", custom_id="d", method="POST", url="/v1/responses", body=responses)
    line("no_custom_id", b"1", custom_id=7, method="GET", url="/v1/responses", body=[])
    out("batch_line", "not_json", b"1{\"custom_id\": \"e\", \"method\": \"POST\"")


def oip_infer_seeds():
    png = tiny_png()

    def raw_bytes(*elements):
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)

    def tensor(name, count, contents=None):
        shape = field(3, 2, varint(count))
        body = field(1, 2, name.encode()) + field(2, 2, b"BYTES") + shape
        if contents is not None:
            body += field(5, 2, b"".join(field(8, 2, e) for e in contents))
        return field(5, 2, body)

    def parameter(name, value):
        if isinstance(value, bool):
            encoded = field(1, 0, varint(int(value)))
        elif isinstance(value, int):
            encoded = field(2, 0, varint(value))
        elif isinstance(value, float):
            encoded = field(4, 1, struct.pack("<d", value))
        else:
            encoded = field(3, 2, value.encode())
        return field(4, 2, field(1, 2, name.encode()) + field(2, 2, encoded))

    model = field(1, 2, b"tiny") + field(3, 2, b"seed")
    out("oip_infer", "image_question", model + tensor("image", 1) + tensor("question", 1)
        + parameter("max_new_tokens", 8) + parameter("do_sample", False) + parameter("temperature", 0.7)
        + parameter("early_stopping", "never") + parameter("priority", "batch")
        + field(7, 2, raw_bytes(png)) + field(7, 2, raw_bytes(b"what is it?")))
    out("oip_infer", "frames_raw", model + field(2, 2, b"v1") + tensor("frames", 3)
        + field(7, 2, raw_bytes(png, png, png)))
    out("oip_infer", "frames_contents", model + tensor("frames", 2, [png, png]) + field(6, 2, field(1, 2, b"text")))
    out("oip_infer", "video", model + tensor("video", 1, [b"\0\0\0\x18ftypisom"]) + parameter("num_beams", 2))


if __name__ == "__main__":
    # The fuzzers' finds (regress_*) are committed inputs, not made here: they stay.
    for target in os.listdir(ROOT) if os.path.isdir(ROOT) else []:
        for name in os.listdir(f"{ROOT}/{target}"):
            if not name.startswith("regress_"):
                os.remove(f"{ROOT}/{target}/{name}")
    os.makedirs(f"{ROOT}/decode_image", exist_ok=True)
    decode_image_seeds()
    raw_frames_seeds()
    request_validation_seeds()
    openai_chat_seeds()
    oip_infer_seeds()
    responses_request_seeds()
    batch_line_seeds()
