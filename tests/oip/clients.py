"""Captions through gitcap's Open Inference Protocol door with clients nobody here wrote:
tritonclient (gRPC and HTTP) or the kserve SDK's v2 clients (gRPC and REST), unary. For each
client: an image with a question (image model), six frames and a video file (video model),
each with the options of the golden case. Prints one JSON object: client -> case -> answer.

usage: clients.py triton|kserve HOST:PORT TOKEN IMAGE VIDEO FRAME...

One family per process: both register the protocol's messages (package `inference`) in
protobuf's default descriptor pool, and a second registration of the same names fails.
"""

import asyncio
import json
import sys

import numpy as np

family, address, token, image_path, video_path, *frame_paths = sys.argv[1:]
headers = {"authorization": f"Bearer {token}"}
OPTIONS = {"max_new_tokens": 12, "do_sample": False}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def bytes_array(elements):
    return np.array(elements, dtype=np.object_)


# (case, model, media input, its elements, question or None)
CASES = [
    ("image_vqa", "image", "image", [read(image_path)], "what is in the picture?"),
    ("frames", "video", "frames", [read(p) for p in frame_paths], None),
    ("video_file", "video", "video", [read(video_path)], None),
]


def answer(text, token_ids, finish_reason, timestamps=None):
    got = {"text": text, "token_ids": [int(t) for t in token_ids], "finish_reason": finish_reason}
    if timestamps is not None:
        got["frame_timestamps_s"] = [float(t) for t in timestamps]
    return got


def decode(value):
    return value.decode() if isinstance(value, bytes) else value


def triton(module, client):
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    assert client.is_model_ready("video", headers=headers)
    metadata = client.get_model_metadata("video", headers=headers)
    names = [t.name for t in metadata.inputs] if hasattr(metadata, "inputs") else [t["name"] for t in metadata["inputs"]]
    assert names == ["image", "frames", "video", "question"], names
    answers = {}
    for case, model, name, elements, question in CASES:
        inputs = []
        for input_name, values in [(name, elements)] + ([("question", [question.encode()])] if question else []):
            tensor = module.InferInput(input_name, [len(values)], "BYTES")
            tensor.set_data_from_numpy(bytes_array(values))
            inputs.append(tensor)
        result = client.infer(model, inputs, headers=headers, parameters=OPTIONS)
        answers[case] = answer(
            decode(result.as_numpy("text")[0]),
            result.as_numpy("token_ids"),
            decode(result.as_numpy("finish_reason")[0]),
            result.as_numpy("frame_timestamps_s"),
        )
    return answers


async def kserve(client, infer):
    from kserve import InferInput, InferRequest

    answers = {}
    for case, model, name, elements, question in CASES:
        inputs = []
        for input_name, values in [(name, elements)] + ([("question", [question.encode()])] if question else []):
            tensor = InferInput(input_name, [len(values)], "BYTES")
            tensor.set_data_from_numpy(bytes_array(values), binary_data=True)
            inputs.append(tensor)
        request = InferRequest(model_name=model, infer_inputs=inputs, parameters=dict(OPTIONS))
        response = await infer(client, request, model)
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        answers[case] = answer(
            decode(outputs["text"][0]),
            outputs["token_ids"],
            decode(outputs["finish_reason"][0]),
            outputs.get("frame_timestamps_s"),
        )
    return answers


async def kserve_both():
    from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig

    grpc_client = InferenceGRPCClient(url=address, timeout=60)
    assert await grpc_client.is_server_ready(headers=tuple(headers.items()))
    grpc_answers = await kserve(
        grpc_client, lambda c, r, _model: c.infer(r, headers=tuple(headers.items()))
    )
    await grpc_client.close()
    rest_client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    rest_answers = await kserve(
        rest_client,
        lambda c, r, model: c.infer(f"http://{address}", r, model_name=model, headers=dict(headers)),
    )
    return grpc_answers, rest_answers


if family == "triton":
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    results = {
        "tritonclient_grpc": triton(triton_grpc, triton_grpc.InferenceServerClient(url=address)),
        "tritonclient_http": triton(triton_http, triton_http.InferenceServerClient(url=address, network_timeout=60)),
    }
else:
    kserve_grpc, kserve_rest = asyncio.run(kserve_both())
    results = {"kserve_grpc": kserve_grpc, "kserve_rest": kserve_rest}
print(json.dumps(results))
