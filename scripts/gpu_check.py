"""Python side of scripts/gpu-check.sh: the transformers reference, and the report.

    python scripts/gpu_check.py prepare --workdir DIR --device cuda [--tiny] [--max-new-tokens 20]
        [--throughput-images 640]
    python scripts/gpu_check.py report --workdir DIR --out OUT [--clients 1 16 64] [--failed STEP ...] [--dry-run]

`prepare` writes, without any network access:
  DIR/model/                   a git-base-vatex-sized GIT checkpoint with random weights (--tiny: the
                               test fixtures' sizes), the tokenizer of tests/fixtures/models/tiny-git-image
  DIR/media/CASE/frame_NN.png  the parity cases' images (one per image case, six for the video case)
  DIR/cases.txt                one line per gitcap run: CASE NUM_BEAMS
  DIR/inputs.safetensors       pixel_values of the first image and of the video (`gitcap-server bench`)
  DIR/throughput/NNNN.png      distinct images for the gRPC load
  DIR/reference.json           transformers' tokens (f32, greedy and beam search) for every case,
                               the greedy logit margins, whether the tokens change with TF32 off,
                               and transformers' own bf16 batch-1 timing
`report` compares DIR/gitcap/CASE-bBEAMS.json (`gitcap-server caption --json`) with the reference,
reads the benchmark JSON files the shell script left in OUT, writes OUT/gpu-check.json and
OUT/summary.txt, prints the summary, and exits 1 if parity failed or a step failed.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

# The targets the GPU run is held to (README: CUDA).
TARGET_MS_PER_TOKEN = 2.0
TARGET_CAPTIONS_PER_S = 500.0
TARGET_CLIENTS = 64

# The test fixtures' sizes (tests/fixtures/models/tiny-git-video), for a dry run on a CPU.
TINY = dict(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
)


def image_processor(preprocessor):
    """transformers' PIL-based VideoMAE processor (the one gitcap's preprocessing matches)."""
    kwargs = {k: v for k, v in preprocessor.items() if k != "image_processor_type"}
    try:
        from transformers.models.videomae.image_processing_pil_videomae import VideoMAEImageProcessorPil
        return VideoMAEImageProcessorPil(**kwargs)
    except ImportError:  # transformers 4: the PIL processor is the default one
        from transformers import VideoMAEImageProcessor
        return VideoMAEImageProcessor(**kwargs)


def noise_image(rng, width, height):
    import numpy as np
    from PIL import Image
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def parity_media(seed):
    """The parity cases: random-noise images (one already 224x224, one of an odd size that
    needs resizing), a structured frame, and six frames of a video."""
    import numpy as np
    from transformers_bench import make_frames
    rng = np.random.default_rng(seed)
    return {
        "noise_224": [noise_image(rng, 224, 224)],
        "noise_500x375": [noise_image(rng, 500, 375)],
        "frame_320x240": make_frames(1, seed=seed + 1),
        "video_6": make_frames(6, seed=seed + 2),
    }


def save_frames(directory, frames):
    os.makedirs(directory, exist_ok=True)
    for i, frame in enumerate(frames):
        frame.save(os.path.join(directory, f"frame_{i:02d}.png"))


def build_checkpoint(model_dir, config, preprocessor):
    from transformers_bench import random_git
    model = random_git(config)
    model.save_pretrained(model_dir)
    shutil.copy(os.path.join(REPO, "tests/fixtures/models/tiny-git-image/tokenizer.json"), model_dir)
    with open(os.path.join(model_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=2)
    return model


def reference_generate(model, pixel_values, max_new_tokens, num_beams):
    """transformers' tokens (without the BOS prompt) and, for greedy search, the gap between
    the best and second-best logit at each step."""
    import torch
    with torch.inference_mode():
        out = model.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=num_beams, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, 1:].tolist()
    margins = None
    if num_beams == 1:
        margins = [float(top[0] - top[1]) for top in (s[0].float().topk(2).values for s in out.scores)]
    return tokens, margins


def without_tf32(generate):
    """Runs `generate` with TF32 off for convolutions too (PyTorch's default lets cuDNN use it even
    in f32, on both sides): whether transformers' own tokens move with it says how sensitive a
    case is to rounding."""
    import torch
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return generate()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def time_decode(model, pixel_values, max_new_tokens, runs):
    """transformers' batch-1 timing: the whole generate call, and the time between the first and
    the last token per token after the first (as `gitcap-server bench` measures it)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StepClock(StoppingCriteria):
        """Notes when each token is chosen; stops nothing."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            if input_ids.is_cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def once():
        clock = StepClock()
        start = time.perf_counter()
        model.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                       stopping_criteria=StoppingCriteriaList([clock]))
        steps = clock.times
        per_token = (steps[-1] - steps[0]) * 1e3 / (len(steps) - 1) if len(steps) > 1 else None
        return steps[-1] - start, per_token, len(steps)

    with torch.inference_mode():
        once()  # warm-up
        timed = [once() for _ in range(runs)]
    per_token = [t for _, t, _ in timed if t is not None]
    return {"median_s": statistics.median(t for t, _, _ in timed), "tokens": timed[0][2],
            "per_token_ms": statistics.median(per_token) if per_token else None}


def prepare(args):
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers_bench import PREPROCESSOR, SEED, VATEX, make_frames

    device = torch.device(args.device)
    config = dict(VATEX, **TINY) if args.tiny else VATEX
    size = config["vision_config"]["image_size"]
    preprocessor = dict(PREPROCESSOR, size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    started = time.perf_counter()
    model = build_checkpoint(os.path.join(args.workdir, "model"), config, preprocessor).to(device)
    build_s = time.perf_counter() - started
    processor = image_processor(preprocessor)

    media = parity_media(SEED)
    pixels = {}
    with open(os.path.join(args.workdir, "cases.txt"), "w") as cases:
        for name, frames in media.items():
            save_frames(os.path.join(args.workdir, "media", name), frames)
            pixels[name] = processor(frames, return_tensors="pt").pixel_values.to(device)
            for beams in args.beams:
                cases.write(f"{name} {beams}\n")
    save_file({"image": pixels["frame_320x240"].cpu().contiguous(), "video": pixels["video_6"].cpu().contiguous()},
              os.path.join(args.workdir, "inputs.safetensors"))
    throughput = os.path.join(args.workdir, "throughput")
    os.makedirs(throughput)
    for i in range(args.throughput_images):
        make_frames(1, seed=SEED + 100 + i)[0].save(os.path.join(throughput, f"{i:04d}.png"), compress_level=1)

    reference = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "cuda": torch.version.cuda},
        "device": args.device,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "model": "tiny (test fixture sizes)" if args.tiny else "git-base-vatex architecture, random weights",
        "max_new_tokens": args.max_new_tokens,
        "checkpoint_build_s": build_s,
        "cases": [],
    }
    for name, pv in pixels.items():
        for beams in args.beams:
            tokens, margins = reference_generate(model, pv, args.max_new_tokens, beams)
            strict = tokens
            if device.type == "cuda":
                strict, _ = without_tf32(lambda: reference_generate(model, pv, args.max_new_tokens, beams))
            reference["cases"].append({"case": name, "frames": len(media[name]), "num_beams": beams,
                                       "tokens": tokens, "greedy_margins": margins,
                                       "tokens_move_without_tf32": strict != tokens})
    bf16 = model.to(torch.bfloat16)
    reference["transformers_bf16_batch1"] = {
        name: time_decode(bf16, pixels[name].to(torch.bfloat16), args.max_new_tokens, args.runs)
        for name in ("frame_320x240", "video_6")
    }
    with open(os.path.join(args.workdir, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def parity_results(workdir, reference):
    results = []
    for case in reference["cases"]:
        run = f"{case['case']}-b{case['num_beams']}"
        gitcap = load_json(os.path.join(workdir, "gitcap", f"{run}.json"))
        result = {"run": run, "frames": case["frames"], "num_beams": case["num_beams"],
                  "transformers": case["tokens"], "gitcap": gitcap and gitcap["token_ids"]}
        if gitcap is None:
            result["status"] = "MISSING"
        elif gitcap["token_ids"] == case["tokens"]:
            result["status"] = "PASS"
        else:
            result["status"] = "FAIL"
            ours, theirs = gitcap["token_ids"], case["tokens"]
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            result["first_difference"] = at
            # A difference where transformers' own top two logits were nearly tied is a rounding
            # flip; a large margin points at a real difference in the computation.
            if case["greedy_margins"] and at < len(case["greedy_margins"]):
                result["transformers_margin_there"] = case["greedy_margins"][at]
            result["tokens_move_without_tf32"] = case["tokens_move_without_tf32"]
        if case["greedy_margins"]:
            result["smallest_greedy_margin"] = min(case["greedy_margins"])
        results.append(result)
    return results


def report(args):
    reference = load_json(os.path.join(args.workdir, "reference.json")) or {}
    parity = parity_results(args.workdir, reference) if reference else []
    parity_ok = bool(parity) and all(r["status"] == "PASS" for r in parity)
    bench = {dtype: load_json(os.path.join(args.out, f"bench-{dtype}.json")) for dtype in ("bf16", "f32")}
    throughput = {}
    for clients in args.clients:
        result = load_json(os.path.join(args.out, f"throughput-{clients}.json"))
        if result:
            throughput[clients] = result
    ms_per_token = bench["bf16"] and bench["bf16"]["image"]["per_token_median_ms"]
    at_target_clients = throughput.get(TARGET_CLIENTS, {}).get("captions_per_s")

    lines = [f"gitcap GPU check{' (DRY RUN on the CPU: its figures are not GPU figures)' if args.dry_run else ''}"]
    versions = reference.get("versions", {})
    lines.append(f"device: {reference.get('gpu') or reference.get('device')}; torch {versions.get('torch')}, "
                 f"CUDA {versions.get('cuda')}, transformers {versions.get('transformers')}; "
                 f"model: {reference.get('model')}; {reference.get('max_new_tokens')} new tokens")
    lines.append("")
    lines.append(f"1. token parity, f32, transformers generate vs gitcap-server caption: {'PASS' if parity_ok else 'FAIL'}")
    for r in parity:
        detail = f"{len(r['transformers'])} tokens"
        if "smallest_greedy_margin" in r:
            detail += f", smallest greedy logit margin {r['smallest_greedy_margin']:.3g}"
        if r["status"] == "FAIL":
            detail += f"; first difference at token {r['first_difference']}"
            if "transformers_margin_there" in r:
                detail += f" (transformers' margin there {r['transformers_margin_there']:.3g})"
            if r["tokens_move_without_tf32"]:
                detail += "; transformers' own tokens change with TF32 off: a rounding-sensitive case"
        lines.append(f"   {r['status']:7} {r['run']:20} {detail}")
    lines.append("")
    lines.append("2. batch 1, bf16 (gitcap-server bench: median of runs, decode time / tokens after the first)")
    for dtype in ("bf16", "f32"):
        for name, r in (bench[dtype] or {}).items():
            lines.append(f"   gitcap {dtype} {name:6} {r['per_token_median_ms']:.2f} ms/token, "
                         f"first token {r['first_token_median_s'] * 1e3:.1f} ms, whole caption {r['median_s'] * 1e3:.1f} ms")
    for name, r in reference.get("transformers_bf16_batch1", {}).items():
        per_token = "n/a" if r["per_token_ms"] is None else f"{r['per_token_ms']:.2f} ms/token"
        lines.append(f"   transformers bf16 {name}: {per_token}, whole caption {r['median_s'] * 1e3:.1f} ms")
    lines.append("")
    lines.append("3. captions/s through gRPC, bf16, distinct images (gitcap-bench throughput)")
    for clients, r in sorted(throughput.items()):
        lines.append(f"   {clients:3} clients: {r['captions_per_s']:.1f} captions/s ({r['requests']} requests, "
                     f"p50 {r['latency_p50_s'] * 1e3:.0f} ms, p99 {r['latency_p99_s'] * 1e3:.0f} ms)")
    lines.append("")
    targets = [
        (f"<= {TARGET_MS_PER_TOKEN} ms/token at batch 1 (bf16, image)", ms_per_token,
         ms_per_token is not None and ms_per_token <= TARGET_MS_PER_TOKEN),
        (f">= {TARGET_CAPTIONS_PER_S:.0f} captions/s at {TARGET_CLIENTS} clients (bf16)", at_target_clients,
         at_target_clients is not None and at_target_clients >= TARGET_CAPTIONS_PER_S),
    ]
    lines.append("targets" + (" (not applicable to a dry run)" if args.dry_run else ""))
    for label, value, met in targets:
        shown = "no figure" if value is None else f"{value:.2f}"
        verdict = "n/a" if args.dry_run else ("met" if met else "NOT met")
        lines.append(f"   {label}: {shown} -> {verdict}")
    if args.failed:
        lines.append("")
        lines.append(f"steps that failed (logs in {args.out}): {', '.join(args.failed)}")
    ok = parity_ok and not args.failed
    lines.append("")
    lines.append(f"RESULT: {'PASS' if ok else 'FAIL'} (parity {'PASS' if parity_ok else 'FAIL'}"
                 f"{', failed steps: ' + ', '.join(args.failed) if args.failed else ''})")
    summary = "\n".join(lines) + "\n"

    result = {
        "dry_run": args.dry_run, "result": "PASS" if ok else "FAIL", "failed_steps": args.failed,
        "reference": {k: v for k, v in reference.items() if k != "cases"},
        "parity": {"status": "PASS" if parity_ok else "FAIL", "runs": parity},
        "bench": bench, "throughput": throughput,
        "targets": [{"target": label, "value": value, "met": None if args.dry_run else met}
                    for label, value, met in targets],
    }
    with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(summary)
    print(summary, end="")
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--workdir", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    p.add_argument("--runs", type=int, default=5, help="timed runs of transformers' bf16 generate")
    p.add_argument("--throughput-images", type=int, default=640)
    r = commands.add_parser("report")
    r.add_argument("--workdir", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    r.add_argument("--failed", nargs="*", default=[])
    r.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
