"""Renders the results of `scripts/bench.sh` (JSON files in its work directory) as
BENCHMARKS.md: tables, ratios against transformers measured in the same run, and the targets.

    python bench/render.py --work DIR --dtypes f32,bf16,fast --clients 1,4,16 --runs 5 \\
        --max-new-tokens 20 --machine "..." --device cpu [--write BENCHMARKS.md]
"""

import argparse
import datetime
import json
import os


def load(work, name):
    path = os.path.join(work, name)
    return json.load(open(path)) if os.path.exists(path) else None


def same(a, b):
    if a == b:
        return "yes"
    return f"{sum(x == y for x, y in zip(a, b))} of {len(a)}"


def main():
    p = argparse.ArgumentParser()
    for flag in ("--work", "--dtypes", "--clients", "--machine", "--device"):
        p.add_argument(flag, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--write")
    a = p.parse_args()
    dtypes, clients = a.dtypes.split(","), [int(c) for c in a.clients.split(",")]
    ref = load(a.work, "transformers.json")
    ref_of = lambda dtype: "f32" if dtype == "fast" else dtype  # noqa: E731
    out = []
    w = out.append
    targets = []

    w("# Benchmarks\n")
    w("Every figure below comes from one run of `scripts/bench.sh --write BENCHMARKS.md`, which regenerates")
    w("this file; gitcap and transformers ran in the same run, on the same machine, on the same inputs.\n")
    w(f"- Machine: {a.machine}, device `{a.device}`; {ref['threads']} threads on both sides.")
    w(f"- Reference: torch {ref['torch']}, transformers `GitForCausalLM.generate`; gitcap: tch 0.24 on libtorch 2.11.0, release build.")
    w(f"- Date: {datetime.date.today().isoformat()}. Model: the full-size git-base-vatex architecture (ViT-B/16")
    w("  tower, 6-layer decoder, 6 frames, 177M parameters) with random weights built from its config (no")
    w("  download), saved in the Hugging Face layout and loaded by both sides.")
    w(f"- Generation: greedy, {a.max_new_tokens} new tokens unless stated. Medians of {a.runs} runs after a warm-up.")
    w("- Machines are noisy: compare ratios from the same run, not absolute figures across runs.\n")

    w("## Latency, one request\n")
    w("One image (a one-frame video, as transformers' VideoMAE processor makes of a single image) and six")
    w("frames. *One-shot* is `gitcap-server bench` (the model path in-process, from the pixels transformers'")
    w("processor made); *gRPC* is a `Caption` call to a running server with the frames as lossless PNG files")
    w("(decoding and preprocessing included, feature cache off). Ratio = gitcap ÷ transformers of the same")
    w("dtype; `fast` (int8 weight-only decoder and LM head, bf16 vision tower) is compared with transformers f32")
    w("and bf16.\n")
    w("| input | dtype | transformers (s) | one-shot (s) | ratio | gRPC (s) | ratio | decode ms/token | tokens identical (one-shot / gRPC) |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for dtype in dtypes:
        one = load(a.work, f"gitcap-{dtype}.json")
        for name, label in (("image", "image"), ("video", "6 frames")):
            r = ref[ref_of(dtype)][name]
            o = one[name]
            g = load(a.work, f"grpc-{dtype}-{name}.json")
            ratio = o["median_s"] / r["median_s"]
            g_ratio = g["median_s"] / r["median_s"]
            extra = ""
            if dtype == "fast" and "bf16" in ref:
                extra = f" (vs bf16: {o['median_s'] / ref['bf16'][name]['median_s']:.2f})"
            per_token = o.get("per_token_median_ms")
            w(f"| {label} | {dtype} | {r['median_s']:.3f} | {o['median_s']:.3f} | {ratio:.2f}{extra} | {g['median_s']:.3f} | {g_ratio:.2f} | "
              f"{per_token:.1f} | {same(r['tokens'], o['tokens'])} / {same(r['tokens'], g['tokens'])} |" if per_token is not None else
              f"| {label} | {dtype} | {r['median_s']:.3f} | {o['median_s']:.3f} | {ratio:.2f}{extra} | {g['median_s']:.3f} | {g_ratio:.2f} | – | "
              f"{same(r['tokens'], o['tokens'])} / {same(r['tokens'], g['tokens'])} |")
            if dtype == "f32":
                targets.append((f"f32 {label}: ≤ 1.0× transformers f32, tokens identical",
                                f"{ratio:.2f}× one-shot, {g_ratio:.2f}× gRPC; tokens {same(r['tokens'], o['tokens'])} / {same(r['tokens'], g['tokens'])}",
                                ratio <= 1.0 and g_ratio <= 1.0 and r["tokens"] == o["tokens"] == g["tokens"]))
            if dtype == "bf16":
                targets.append((f"bf16 {label}: ≤ 0.8× transformers bf16", f"{ratio:.2f}× one-shot, {g_ratio:.2f}× gRPC",
                                ratio <= 0.8))
            if dtype == "fast" and name == "image":
                vs32 = o["median_s"] / ref["f32"]["image"]["median_s"]
                targets.append(("fast image caption: ≤ 0.35× transformers f32", f"{vs32:.2f}×", vs32 <= 0.35))
                if "bf16" in ref:
                    vs16 = o["median_s"] / ref["bf16"]["image"]["median_s"]
                    targets.append(("fast image caption: ≤ 0.6× transformers bf16", f"{vs16:.2f}×", vs16 <= 0.6))
                if per_token is not None:
                    targets.append(("fast decode at batch 1: ≤ 6 ms/token", f"{per_token:.1f} ms/token", per_token <= 6.0))
    w("")

    w("## Throughput, concurrent clients\n")
    w(f"Captions per second of distinct images ({a.max_new_tokens} new tokens each, greedy) with N clients")
    w("calling `Caption` at once through gRPC (continuous batching on; feature cache off), against")
    w(f"transformers captioning the images one after another, and in batches of {max(clients)} (its own batching:")
    w("one `generate` call on a stacked batch).\n")
    w("| dtype | clients | captions/s | p50 latency (s) | p99 latency (s) | ÷ transformers sequential | ÷ transformers batched |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for dtype in dtypes:
        t = ref[ref_of(dtype)]["throughput"]
        seq, bat = t["sequential"]["captions_per_s"], t["batched"]["captions_per_s"]
        for c in clients:
            g = load(a.work, f"grpc-{dtype}-throughput-{c}.json")
            cps = g["captions_per_s"]
            w(f"| {dtype} | {c} | {cps:.2f} | {g['latency_p50_s']:.2f} | {g['latency_p99_s']:.2f} | {cps / seq:.2f}× | {cps / bat:.2f}× |")
            if c == max(clients) and dtype == "f32":
                targets.append((f"{c} clients f32: ≥ 2× transformers sequential f32", f"{cps / seq:.2f}×", cps / seq >= 2))
            if c == max(clients) and dtype == "fast":
                targets.append((f"{c} clients fast: ≥ 4× transformers sequential f32", f"{cps / seq:.2f}×", cps / seq >= 4))
    w("")
    w("| reference dtype | transformers sequential (captions/s) | transformers batched (captions/s) |")
    w("|---|---:|---:|")
    for dtype in [d for d in ref if isinstance(ref[d], dict) and "throughput" in ref[d]]:
        t = ref[dtype]["throughput"]
        w(f"| {dtype} | {t['sequential']['captions_per_s']:.2f} | {t['batched']['captions_per_s']:.2f} (batch {t['batched']['batch']}) |")
    w("")

    w("## Follow-up question on cached frames\n")
    w("Six new frames captioned (cold: decoding, preprocessing, vision tower, image prefill, 5 tokens), then a")
    w("question about the same frames (the feature cache holds their image keys/values: prompt and 5 tokens")
    w(f"only). Medians over {a.runs} frame sets, through gRPC.\n")
    w("| dtype | cold (s) | follow-up (s) | ratio |")
    w("|---|---:|---:|---:|")
    for dtype in dtypes:
        f = load(a.work, f"grpc-{dtype}-followup.json")
        w(f"| {dtype} | {f['cold_median_s']:.3f} | {f['follow_up_median_s']:.3f} | {f['ratio']:.3f} |")
        if dtype == "f32":
            targets.append(("cached follow-up: ≤ 0.1× a cold request (f32)", f"{f['ratio']:.3f}×", f["ratio"] <= 0.1))
    w("")

    fidelity = os.path.join(a.work, "fidelity-fast.txt")
    if "fast" in dtypes and os.path.exists(fidelity):
        w("## Fast mode fidelity\n")
        w("`gitcap-server fidelity --dtype fast` on the benchmark checkpoint, against f32 (teacher-forced on the")
        w("f32 greedy tokens):\n")
        text = open(fidelity).read().rstrip()
        w("```")
        w(text)
        w("```\n")
        for line in text.splitlines():
            if "logits relative error:" in line:
                worst = float(line.split("max")[1].split(",")[0])
                mean = float(line.split("mean")[1])
                agreement = next((l.split(":", 1)[1].strip() for l in text.splitlines() if "top-1 agreement" in l), "?")
                targets.append(("fast logits relative error vs f32: ≤ 2e-2",
                                f"max {worst:.2e}, mean {mean:.2e}; teacher-forced top-1 agreement {agreement}",
                                worst <= 2e-2))

    w("## Targets\n")
    w("| target | measured | met |")
    w("|---|---|---|")
    for name, measured, ok in targets:
        w(f"| {name} | {measured} | {'yes' if ok else '**no**'} |")
    w("")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
    if os.path.exists(notes):
        w(open(notes).read().rstrip() + "\n")
    text = "\n".join(out)
    print(text)
    if a.write:
        with open(a.write, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
