"""The machine's limit for `scripts/bench.sh`: how fast this CPU multiplies matrices (GFLOP/s in
f32 and bf16, libtorch's GEMM at the threads of the benchmark), and the matrix FLOPs one caption
needs (from the checkpoint's config.json), so that each throughput figure can be given as a
share of what the machine could do at best.

    python bench/machine_limit.py --model DIR --threads N --max-new-tokens 20 > machine.json

It also measures the memory bandwidth (reading a buffer far larger than the caches, at the same
threads, in small and in huge pages: the best reading) and counts the bytes one batch-1 decoding step reads in each dtype: every decoder and
LM-head weight once, and the key/value cache (text f32; image f32, or bf16 where the image
prefill computed them in bf16: bf16 mode, and fast mode with native bf16). Bytes ÷ bandwidth is that
step's floor: no implementation reads the weights faster.

FLOPs count the matrix products only (2 per multiply-add: projections, MLPs, attention scores and
weighted sums, patch embedding, LM head), which is where the time goes; LayerNorm, softmax and
activations are left out. A caption of one image (one frame): vision tower, visual projection,
image prefill through the decoder, then `max_new_tokens` decoding steps of one token each
(the first one fed with the prompt, a single BOS token).
"""

import argparse
import json
import mmap
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


def read_bandwidth_gbs(mib=1024, runs=9, allocations=3):
    """GB/s of reading `mib` MiB of f32 (a sum: vectorised, one pass, no writes), the best of
    `allocations` fresh buffers in 4 KiB pages and as many in transparent huge pages.

    The figure moves with where a buffer lands: the same sum read 30–45 GB/s from one fresh
    4 KiB-page buffer to the next on the benchmark's machine, and huge pages read another 20%
    faster (no TLB miss every 4 KiB, prefetchers not stopped at each page's end). gitcap keeps
    its packed decoding weights in huge pages, so the floor takes the best reading of both kinds:
    no implementation streams weights faster than that.
    """
    def median_read(buffer):
        buffer.sum()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            buffer.sum()
            times.append(time.perf_counter() - start)
        return buffer.numel() * 4 / statistics.median(times) / 1e9

    size = mib << 20
    small = []
    for _ in range(allocations):
        small.append(median_read(torch.ones(size // 4)))
    huge = []
    for _ in range(allocations):
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
            mapping.madvise(mmap.MADV_HUGEPAGE)
        buffer = torch.frombuffer(mapping, dtype=torch.float32)
        buffer.fill_(1.0)
        huge.append(median_read(buffer))
        del buffer
        mapping.close()
    return {"best": max(small + huge), "small_pages": small, "huge_pages": huge}


def native_bf16():
    """Whether the CPU has bf16 dot-product instructions (as gitcap's fast mode detects them)."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Bytes per weight as each dtype reads it in a batch-1 decoding step: fast mode reads int8
# weights (plus a bf16 scale per output row) except the value projections, which it keeps in
# bf16 where the CPU has native bf16 and in f32 elsewhere.
WEIGHT_BYTES = {"f32": 4, "bf16": 2, "fast": 1}
FAST_DENSE_BYTES = 2 if native_bf16() else 4
TEXT_CACHE_BYTES = 4
# The image keys and values stay in the dtype the image prefill computed them in where it is bf16
# (server/src/model/decoder.rs, prefix_kind): bf16 mode, and fast mode with native bf16.
IMAGE_CACHE_BYTES = {"f32": 4, "bf16": 2, "fast": FAST_DENSE_BYTES}


def decode_step_bytes(config, dtype, image_tokens, text_tokens):
    """Bytes read by one decoding step of one sequence: weights and the key/value cache."""
    h, i, layers, vocab = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    per_weight = WEIGHT_BYTES[dtype]
    matrices = [(h, h), (h, h), (h, h), (h, h), (i, h), (h, i)]  # query, key, value, output, intermediate, output
    weights = 0
    for index, (out, inp) in enumerate(matrices):
        dense = dtype == "fast" and index == 2  # the value projection
        weights += out * inp * (FAST_DENSE_BYTES if dense else per_weight)
        weights += out * (2 if dtype == "fast" and not dense else 0)  # int8 scales
        weights += out * (4 if dtype == "fast" else per_weight)  # bias
    weights *= layers
    head = vocab * h * per_weight + vocab * (2 if dtype == "fast" else 0) + vocab * (4 if dtype == "fast" else per_weight)
    cache = layers * 2 * h * (image_tokens * IMAGE_CACHE_BYTES[dtype] + text_tokens * TEXT_CACHE_BYTES)
    return {"weights": weights + head, "cache": cache, "total": weights + head + cache}


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
    v = config["vision_config"]
    tokens_per_image = (v["image_size"] // v["patch_size"]) ** 2 + 1
    frames = config.get("num_image_with_embedding") or 1
    # The step halfway through the caption (text cache of prompt + half the new tokens).
    text = 1 + a.max_new_tokens // 2
    bandwidth = read_bandwidth_gbs()
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "read_bandwidth_gbs": bandwidth["best"],
        "read_bandwidth_readings_gbs": {k: v for k, v in bandwidth.items() if k != "best"},
        "decode_step_bytes": {
            dtype: {
                "image": decode_step_bytes(config, dtype, tokens_per_image, text),
                "video": decode_step_bytes(config, dtype, frames * tokens_per_image, text),
            }
            for dtype in WEIGHT_BYTES
        },
        "gemm_shape": [3072, 768, 3072],
        "gemm_gflops": {"f32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)},
        "caption_flops": caption_flops(config, 1, a.max_new_tokens),
        "video_caption_flops": caption_flops(config, config.get("num_image_with_embedding") or 1, a.max_new_tokens),
    }))


if __name__ == "__main__":
    main()
