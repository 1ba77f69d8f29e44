"""Renders the results of `scripts/bench.sh` (JSON files in its work directory) as
BENCHMARKS.md: tables, ratios against transformers measured in the same run, and the targets.

    python bench/render.py --work DIR --dtypes f32,bf16,fast --clients 1,4,16 --runs 5 \\
        --max-new-tokens 20 --machine "..." --device cpu [--write BENCHMARKS.md]
"""

import argparse
import datetime
import json
import os
import statistics


def load(work, name):
    path = os.path.join(work, name)
    return json.load(open(path)) if os.path.exists(path) else None


def same(a, b):
    if a == b:
        return "yes"
    return f"{sum(x == y for x, y in zip(a, b))} of {len(a)}"


def paired_runs(work, dtype):
    """(gitcap, transformers) captions/s of scripts/bench.sh's back-to-back pairs for `dtype`."""
    runs = []
    for pair in (1, 2, 3):
        g, t = load(work, f"pair-{dtype}-{pair}-gitcap.json"), load(work, f"pair-{dtype}-{pair}-transformers.json")
        if g and t:
            ref_dtype = next(k for k in t if isinstance(t[k], dict))
            runs.append((g["captions_per_s"], t[ref_dtype]["batched"]["captions_per_s"]))
    return runs


def paired_ratios(work, dtype):
    return [g / r for g, r in paired_runs(work, dtype)]


NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_features():
    """The CPU's flags that decide which kernels and modes are fast (from /proc/cpuinfo)."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in NOTABLE_FLAGS if f in flags]


def cpu_model():
    try:
        return next(l for l in open("/proc/cpuinfo") if l.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return "unknown CPU"


def fidelity_mean(work, dtype):
    """Mean logits relative error of `gitcap-server fidelity --dtype DTYPE`, or None."""
    path = os.path.join(work, f"fidelity-{dtype}.txt")
    if not os.path.exists(path):
        return None
    line = next((l for l in open(path) if "logits relative error:" in l), None)
    return float(line.split("mean")[1]) if line else None


def engine_round3_targets(a, ref, machine, dtypes, clients):
    """The targets of issue 25 (engine round 3): (target, measured, met: bool or a reason)."""
    targets = []
    top = max(clients)
    ref_dtypes = [d for d in ref if isinstance(ref[d], dict) and "throughput" in ref[d]]
    if not ref_dtypes:
        return targets
    best_ref = max(ref_dtypes, key=lambda d: ref[d]["throughput"]["batched"]["captions_per_s"])
    best_ref_cps = ref[best_ref]["throughput"]["batched"]["captions_per_s"]
    served = {d: load(a.work, f"grpc-{d}-throughput-{top}.json") for d in dtypes}
    served = {d: g["captions_per_s"] for d, g in served.items() if g}
    gemm = machine["gemm_gflops"]
    flops = machine["caption_flops"]["total"]
    if served:
        best = max(served, key=served.get)
        ratio = served[best] / best_ref_cps
        share = served[best] * flops / (gemm["f32" if best == "f32" else "bf16"] * 1e9)
        targets.append((f"1. {top} clients, best mode ≥ 2.0× transformers' best batched-{top}",
                        f"{best} {served[best]:.2f} vs transformers {best_ref} {best_ref_cps:.2f} captions/s: {ratio:.2f}×",
                        ratio >= 2.0))
        amx = "amx_bf16" in cpu_features()
        targets.append((f"1. {top} clients, best mode ≥ 70% of the machine's limit (CPUs with AMX)",
                        f"{share:.0%} ({best})", share >= 0.7 if amx else "n/a: this CPU has no AMX"))
    if "fast" in served and "f32" in served:
        vs_f32 = served["fast"] / served["f32"]
        targets.append((f"2. {top} clients fast ≥ 1.3× gitcap f32", f"{served['fast']:.2f} vs {served['f32']:.2f}: {vs_f32:.2f}×", vs_f32 >= 1.3))
        vs_ref = served["fast"] / best_ref_cps
        targets.append((f"2. {top} clients fast ≥ 1.5× transformers' best batched-{top}",
                        f"{vs_ref:.2f}× (transformers {best_ref})", vs_ref >= 1.5))
    one_fast = load(a.work, "gitcap-fast.json")
    if one_fast:
        faster = min((d for d in ref_dtypes), key=lambda d: ref[d]["image"]["median_s"])
        r = one_fast["image"]["median_s"] / ref[faster]["image"]["median_s"]
        targets.append(("2. fast one-image latency ≤ 0.5× transformers' faster mode",
                        f"{one_fast['image']['median_s']:.3f} s vs {ref[faster]['image']['median_s']:.3f} s ({faster}): {r:.2f}×", r <= 0.5))
    bandwidth = machine.get("read_bandwidth_gbs")
    for dtype in ("bf16", "fast"):
        one = load(a.work, f"gitcap-{dtype}.json")
        if not (one and bandwidth and dtype in dtypes):
            continue
        for name, label in (("image", "image"), ("video", "6 frames")):
            per_token = one[name].get("per_token_median_ms")
            step = machine["decode_step_bytes"][dtype][name]["total"]
            floor = step / (bandwidth * 1e9) * 1e3
            if per_token is not None:
                targets.append((f"3. batch-1 decoding ≤ 1.5× the bandwidth floor ({dtype}, {label})",
                                f"{per_token:.2f} ms/token vs floor {floor:.2f} ms ({step / 1e6:.0f} MB at {bandwidth:.1f} GB/s): {per_token / floor:.2f}×",
                                per_token / floor <= 1.5))
    for dtype in dtypes:
        f = load(a.work, f"grpc-{dtype}-followup.json")
        stages = (f or {}).get("follow_up_median_stages_ms")
        if not stages:
            continue
        own = stages["prefill"] + stages["decode"]
        r = f["follow_up_median_s"] * 1e3 / own
        targets.append((f"4. follow-up on cached frames ≤ its prompt prefill + decoding steps + 10% ({dtype})",
                        f"{f['follow_up_median_s'] * 1e3:.0f} ms vs {stages['prefill']:.0f} + {stages['decode']:.0f} ms: {r:.2f}×", r <= 1.1))
    auto = load(a.work, "auto.json")
    if auto:
        picked = auto.get("dtype")
        one_shot = {d: load(a.work, f"gitcap-{d}.json") for d in dtypes}
        latency = {d: r["image"]["median_s"] for d, r in one_shot.items() if r}
        fastest = min(latency, key=latency.get) if latency else None
        most = max(served, key=served.get) if served else None
        ok = picked == fastest or (picked in served and most and served[picked] >= 0.9 * served[most])
        targets.append(("5. `--dtype auto` picks the fastest mode here",
                        f"picked {picked}; fastest one image: {fastest}; most captions/s at {top} clients: {most}", bool(ok)))
    bf16_err, fast_err = fidelity_mean(a.work, "bf16"), fidelity_mean(a.work, "fast")
    if bf16_err and fast_err:
        targets.append(("6. fast mode's mean logits error ≤ 2× bf16 mode's",
                        f"{fast_err:.2e} vs {bf16_err:.2e}: {fast_err / bf16_err:.2f}×", fast_err <= 2 * bf16_err))
    if a.device == "cpu":
        targets.append(("7. GPU: ≤ 2 ms/token at batch 1, ≥ 500 captions/s at 64 clients (H100)", "not measured", "blocked: no GPU lent"))
    return targets


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
    machine = load(a.work, "machine.json")
    ref_of = lambda dtype: "f32" if dtype == "fast" else dtype  # noqa: E731
    # The GEMM rate a dtype's matrix products run at: fast mode's vision tower and its prefill and
    # batched decoding (the dequantised copy) run in bf16.
    gemm_of = lambda dtype: machine["gemm_gflops"]["f32" if dtype == "f32" else "bf16"] * 1e9  # noqa: E731
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
            if name == "image":
                gap = g["median_s"] / o["median_s"]
                targets.append((f"{dtype} image: gRPC within 5% of in-process (one-shot)",
                                f"{gap:.3f}× ({(g['median_s'] - o['median_s']) * 1e3:+.0f} ms)", gap <= 1.05))
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
    flops = machine["caption_flops"]
    w(f"*Share of limit*: the caption's matrix FLOPs ({flops['total'] / 1e9:.1f} GFLOP: vision tower {flops['vision'] / 1e9:.1f},")
    w(f"image prefill {flops['prefill'] / 1e9:.1f}, {a.max_new_tokens} decoding steps {flops['decode'] / 1e9:.1f}; `bench/machine_limit.py`) times")
    w("captions per second, over the rate of a [3072, 768] × [768, 3072] matrix product measured in the same run")
    w(f"(f32 {machine['gemm_gflops']['f32']:.0f} GFLOP/s, bf16 {machine['gemm_gflops']['bf16']:.0f} GFLOP/s, {machine['threads']} threads; fast mode")
    w("counts at the bf16 rate): how close to the machine's ceiling each figure is. Server timings are the medians")
    w("of the responses' `Timings` (ms).\n")
    w("| dtype | clients | captions/s | share of limit | p50 latency (s) | p99 latency (s) | ÷ transformers sequential | ÷ transformers batched | server queue / vision / prefill / decode (ms) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for dtype in dtypes:
        t = ref[ref_of(dtype)]["throughput"]
        seq, bat = t["sequential"]["captions_per_s"], t["batched"]["captions_per_s"]
        for c in clients:
            g = load(a.work, f"grpc-{dtype}-throughput-{c}.json")
            cps = g["captions_per_s"]
            share = cps * flops["total"] / gemm_of(dtype)
            s = g.get("server_median_ms", {})
            stages = " / ".join(f"{s.get(k, float('nan')):.0f}" for k in ("queue", "vision", "prefill", "decode"))
            w(f"| {dtype} | {c} | {cps:.2f} | {share:.0%} | {g['latency_p50_s']:.2f} | {g['latency_p99_s']:.2f} | {cps / seq:.2f}× | {cps / bat:.2f}× | {stages} |")
            if c == max(clients):
                bf16 = ref.get("bf16", {}).get("throughput", {}).get("batched", {}).get("captions_per_s")
                goal = {"f32": ("transformers f32", bat, 1.0), "bf16": ("transformers bf16", bf16, 1.1), "fast": ("transformers bf16", bf16, 1.25)}
                pairs = paired_ratios(a.work, dtype)
                if dtype in goal and pairs:
                    against, _, factor = goal[dtype]
                    ratio = statistics.median(pairs)
                    targets.append((f"{c} clients {dtype}: ≥ {factor}× {against} batched-{t['batched']['batch']}",
                                    f"{ratio:.2f}× (median of {len(pairs)} back-to-back pairs: "
                                    + ", ".join(f"{r:.2f}" for r in pairs) + ")", ratio >= factor))
                elif dtype in goal and goal[dtype][1]:
                    against, value, factor = goal[dtype]
                    targets.append((f"{c} clients {dtype}: ≥ {factor}× {against} batched-{t['batched']['batch']}",
                                    f"{cps / value:.2f}× ({cps:.2f} vs {value:.2f} captions/s)", cps / value >= factor))
    w("")
    paired = [(d, paired_runs(a.work, d)) for d in dtypes]
    if any(runs for _, runs in paired):
        w("**Back to back.** The table's two sides ran minutes apart, and this machine's speed drifts over")
        w(f"minutes. So for each dtype, with its server up, transformers' batch of {max(clients)} and then {max(clients)} gRPC")
        w("clients ran in turn, three times; the targets use the median of these pairs' ratios (captions/s).\n")
        w("| dtype | against | pair 1 | pair 2 | pair 3 | median ratio |")
        w("|---|---|---|---|---|---:|")
        for dtype, runs in paired:
            if not runs:
                continue
            cells = [f"{g:.2f} vs {r:.2f} ({g / r:.2f}×)" for g, r in runs]
            cells += [""] * (3 - len(cells))
            against = "transformers f32" if dtype == "f32" else "transformers bf16"
            w(f"| {dtype} | {against} | " + " | ".join(cells) + f" | {statistics.median(g / r for g, r in runs):.2f}× |")
        w("")
    w("| reference dtype | transformers batched: share of limit |")
    w("|---|---:|")
    for dtype in [d for d in ref if isinstance(ref[d], dict) and "throughput" in ref[d]]:
        bat = ref[dtype]["throughput"]["batched"]["captions_per_s"]
        w(f"| {dtype} | {bat * flops['total'] / gemm_of(dtype):.0%} |")
    w("")

    w("| reference dtype | transformers sequential (captions/s) | transformers batched (captions/s) |")
    w("|---|---:|---:|")
    for dtype in [d for d in ref if isinstance(ref[d], dict) and "throughput" in ref[d]]:
        t = ref[dtype]["throughput"]
        w(f"| {dtype} | {t['sequential']['captions_per_s']:.2f} | {t['batched']['captions_per_s']:.2f} (batch {t['batched']['batch']}) |")
    w("")

    w("## Interactive requests behind batch work\n")
    w(f"{max(clients) + 8} callers send batch-priority captions without pause (the queue stays full); meanwhile")
    w(f"{a.runs} interactive captions, one after another. Their queue time, against one vision pass plus one")
    w("decoding step of the batch work (medians of the batch requests' `Timings`: `vision_ms`, and")
    w("`decode_ms` ÷ generated tokens).\n")
    w("| dtype | interactive queue (ms) | vision pass (ms) | decoding step (ms) | queue ÷ (vision + step) |")
    w("|---|---:|---:|---:|---:|")
    for dtype in dtypes:
        pr = load(a.work, f"grpc-{dtype}-priority.json")
        if pr is None:
            continue
        w(f"| {dtype} | {pr['interactive_queue_median_ms']:.0f} | {pr['batch_vision_median_ms']:.0f} | {pr['batch_step_median_ms']:.1f} | {pr['ratio']:.2f} |")
        targets.append((f"{dtype}: interactive queue time under batch load ≤ one vision pass + one decoding step",
                        f"{pr['interactive_queue_median_ms']:.0f} ms vs {pr['bound_ms']:.0f} ms", pr["ratio"] <= 1.0))
    w("")
    w("## Follow-up question on cached frames\n")
    w(f"Six new frames captioned (cold: decoding, preprocessing, vision tower, image prefill, {a.max_new_tokens} tokens), then a")
    w(f"question about the same frames (the feature cache holds their image keys/values: prompt and {a.max_new_tokens} tokens")
    w("only). Medians over the frame sets after the first, through gRPC.\n")
    w("| dtype | cold (s) | follow-up (s) | ratio |")
    w("|---|---:|---:|---:|")
    for dtype in dtypes:
        f = load(a.work, f"grpc-{dtype}-followup.json")
        w(f"| {dtype} | {f['cold_median_s']:.3f} | {f['follow_up_median_s']:.3f} | {f['ratio']:.3f} |")
        targets.append((f"cached follow-up, {f.get('answer_tokens', '?')} new tokens: ≤ 0.1× a cold request ({dtype})",
                        f"{f['ratio']:.3f}×", f["ratio"] <= 0.1))
    w("")

    w("## Memory\n")
    w("The server's resident memory (RSS, MiB): one version loaded and warm; a hot swap to a second version")
    w("of the same checkpoint (`gitcap models swap --keep-previous`: peak during it, and both loaded after);")
    w("then the first unloaded and one more request served. Includes libtorch itself and its allocator's")
    w("free lists. *Mapped* is the part of it that is the checkpoint file's own pages (from `smaps`): weights")
    w("already in the serving dtype are views of the mapped file, not copies (f32 from an f32 checkpoint);")
    w("each version maps the file once, and the kernel counts the shared pages in each mapping.\n")
    w("| dtype | one version (mapped) | swap peak | two versions (mapped) | first unloaded |")
    w("|---|---:|---:|---:|---:|")
    for dtype in dtypes:
        m = load(a.work, f"memory-{dtype}.json")
        if m is None:
            continue
        mib = lambda k: m[k] / 1024  # noqa: E731
        mapped = lambda k: f" ({m[k] / 1024:.0f})" if k in m else ""  # noqa: E731
        w(f"| {dtype} | {mib('one_version_kib'):.0f}{mapped('one_version_file_kib')} | {mib('swap_peak_kib'):.0f} "
          f"| {mib('two_versions_kib'):.0f}{mapped('two_versions_file_kib')} | {mib('after_unload_kib'):.0f} |")
        if dtype == "f32" and "one_version_file_kib" in m:
            share = m["one_version_file_kib"] / m["one_version_kib"]
            targets.append(("f32 weights mapped from the checkpoint, not copied",
                            f"{share:.0%} of one version's RSS is the mapped file", share >= 0.5))
    w("")

    decoded = os.path.join(a.work, "video-decode.jsonl")
    captioned = load(a.work, "grpc-video-files.json")
    if os.path.exists(decoded) and captioned:
        lines = [json.loads(l) for l in open(decoded) if l.strip().startswith("{")]
        video_dtype = (load(a.work, "grpc-video-files.dtype.json") or {}).get("dtype", "?")
        w("## Video files\n")
        w("1080p H.264 files (x264 defaults, 30 fps, ffmpeg's testsrc2; `scripts/bench-video.sh` makes them once):")
        w("*decode and sample* is the server's video path alone (`gitcap-server bench-video`: ffprobe, then the")
        w("six sampled frames decoded by ffmpeg children seeking to the keyframe before each); *caption* is an")
        w(f"`UploadVideo` call through gRPC ({video_dtype}, feature cache off): upload, decode, sample, caption. Medians of")
        w(f"{a.runs} runs after a warm-up.\n")
        w("| file | size (MB) | probe (ms) | sample (ms) | decode and sample (ms) | caption (s) | server vision / prefill / decode (ms) |")
        w("|---|---:|---:|---:|---:|---:|---|")
        rows = []
        for d, c in zip(lines, captioned["files"]):
            s = c["server_median_ms"]
            name = os.path.basename(c["file"])
            w(f"| {name} | {c['bytes'] / 1e6:.0f} | {d['probe_ms']:.0f} | {d['sample_ms']:.0f} | {d['total_ms']:.0f} | {c['caption_median_s']:.2f} | "
              f"{s['vision']:.0f} / {s['prefill']:.0f} / {s['decode']:.0f} |")
            rows.append((d["total_ms"], c["caption_median_s"]))
        w("")
        if len(rows) == 2:
            (short_d, short_c), (long_d, long_c) = rows
            targets.append(("10-minute video decode and sample: ≤ 2× the 10-second one and ≤ 1.5 s",
                            f"{long_d / short_d:.2f}×, {long_d:.0f} ms", long_d / short_d <= 2 and long_d <= 1500))
            targets.append(("10-minute video caption: ≤ 2× the 10-second one", f"{long_c / short_c:.2f}× ({long_c:.2f} s vs {short_c:.2f} s)",
                            long_c / short_c <= 2))

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
                targets.append(("fast logits relative error vs f32: ≤ 1e-2",
                                f"max {worst:.2e}, mean {mean:.2e}; teacher-forced top-1 agreement {agreement}",
                                worst <= 1e-2))

    round3 = engine_round3_targets(a, ref, machine, dtypes, clients)
    if round3:
        w("## Targets: engine round 3\n")
        w(f"CPU: {cpu_model()}; features: {', '.join(cpu_features()) or 'none of note'}.\n")
        w("| target | measured | met |")
        w("|---|---|---|")
        for name, measured, ok in round3:
            w(f"| {name} | {measured} | {ok if isinstance(ok, str) else ('yes' if ok else '**no**')} |")
        w("")

    w("## Targets of earlier rounds\n")
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
