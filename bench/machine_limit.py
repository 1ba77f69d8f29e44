"""The machine's limit for `scripts/bench.sh`: how fast this CPU multiplies matrices (GFLOP/s in
f32 and bf16, libtorch's GEMM at the threads of the benchmark), and the matrix FLOPs one caption
needs (from the checkpoint's config.json), so that each throughput figure can be given as a
share of what the machine could do at best.

    python bench/machine_limit.py --model DIR --threads N --max-new-tokens 20 > machine.json

FLOPs count the matrix products only (2 per multiply-add: projections, MLPs, attention scores and
weighted sums, patch embedding, LM head), which is where the time goes; LayerNorm, softmax and
activations are left out. A caption of one image (one frame): vision tower, visual projection,
image prefill through the decoder, then `max_new_tokens` decoding steps of one token each
(the first one fed with the prompt, a single BOS token).
"""

import argparse
import json
import os
import statistics
import time

import torch


def gemm_gflops(dtype, m=3072, k=768, n=3072, runs=20):
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def layer_macs(tokens, hidden, intermediate, visible):
    """One transformer layer on `tokens` tokens that each attend to `visible` positions."""
    projections = 4 * hidden * hidden + 2 * hidden * intermediate
    attention = 2 * visible * hidden  # scores and weighted sum
    return tokens * (projections + attention)


def caption_flops(config, frames, new_tokens):
    v = config["vision_config"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    image_tokens = patches + 1
    vision = frames * (
        patches * v["num_channels"] * v["patch_size"] ** 2 * v["hidden_size"]
        + v["num_hidden_layers"] * layer_macs(image_tokens, v["hidden_size"], v["intermediate_size"], image_tokens)
    )
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    n = frames * image_tokens
    projection = n * v["hidden_size"] * h
    prefill = layers * layer_macs(n, h, i, n)
    decode = sum(layers * layer_macs(1, h, i, n + t + 1) + h * config["vocab_size"] for t in range(new_tokens))
    macs = {"vision": vision, "prefill": projection + prefill, "decode": decode}
    flops = {part: 2 * m for part, m in macs.items()}
    flops["total"] = sum(flops.values())
    return flops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=20)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    config = json.load(open(os.path.join(a.model, "config.json")))
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "gemm_shape": [3072, 768, 3072],
        "gemm_gflops": {"f32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)},
        "caption_flops": caption_flops(config, 1, a.max_new_tokens),
        "video_caption_flops": caption_flops(config, config.get("num_image_with_embedding") or 1, a.max_new_tokens),
    }))


if __name__ == "__main__":
    main()
