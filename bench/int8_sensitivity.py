"""Which of fast mode's int8 layers cost the most fidelity: fake quantisation of the decoder's
linear layers and LM head in PyTorch (per-row absmax int8 with a bf16 scale, inputs rounded to
bf16, as gitcap's int8 layers compute), on the benchmark's random-weight git-base-vatex
checkpoint, teacher-forced on f32's greedy tokens; the logits relative error against f32 for
whole-model bf16, all-int8, each group kept in bf16, combinations and other int8 schemes. It chose
the layers fast mode keeps out of int8 (docs/fast-mode.md, "Which layers stay out of int8").

    python bench/int8_sensitivity.py prep        # tokens, features and f32 logits, cached
    python bench/int8_sensitivity.py base|sens|combo|schemes|groups
    python bench/int8_sensitivity.py custom value,attn_out head ...

Model: $GITCAP_BENCH_MODEL (default ~/.cache/gitcap/bench/model, made by scripts/bench.sh);
results are appended as JSON lines to $GITCAP_STUDY_DIR/results.jsonl (default
~/.cache/gitcap/int8-study).
"""
import sys, json, time, copy, os
import torch, torch.nn as nn
torch.set_num_threads(1)
from transformers import GitForCausalLM

MODEL = os.environ.get("GITCAP_BENCH_MODEL", os.path.expanduser("~/.cache/gitcap/bench/model"))
D = os.environ.get("GITCAP_STUDY_DIR", os.path.expanduser("~/.cache/gitcap/int8-study"))
os.makedirs(D, exist_ok=True)
CACHE = os.path.join(D, "cache.pt")
RES = os.path.join(D, "results.jsonl")
NNEW = 20
KINDS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
         "attn_out": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense"}


def make_inputs():
    ins = []
    for i in range(8):
        g = torch.Generator().manual_seed(1000 + i)
        frames = 1 if i < 4 else 6
        blocks = torch.rand(1, frames, 3, 8, 8, generator=g)  # coarse random colour blocks
        px = torch.nn.functional.interpolate(blocks.view(frames, 3, 8, 8), size=(224, 224), mode="nearest")
        px = ((px - 0.5) / 0.5).view(1, frames, 3, 224, 224)
        ins.append(px)
    return ins


class Stub(nn.Module):
    """Replaces git.image_encoder: returns cached per-frame encoder outputs.
    pixel_values passed to the model are [1, F, 1, 1, 1] holding global frame ids."""
    def __init__(self):
        super().__init__()
        self.feats = None  # list of [1,197,768] tensors

    def forward(self, pv, interpolate_pos_encoding=False):
        class O: pass
        o = O(); o.last_hidden_state = self.feats[int(pv.flatten()[0].item())].clone()
        return o


def load():
    m = GitForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    return m


def frame_ids(inputs):
    ids, k = [], 0
    for px in inputs:
        F = px.shape[1]
        ids.append(torch.arange(k, k + F, dtype=torch.float32).view(1, F, 1, 1, 1)); k += F
    return ids


@torch.no_grad()
def prep():
    m = load()
    inputs = make_inputs()
    enc = m.git.image_encoder
    t = time.time()
    f32 = [enc(px[:, f]).last_hidden_state for px in inputs for f in range(px.shape[1])]
    print("f32 tower", time.time() - t, flush=True)
    encb = copy.deepcopy(enc).to(torch.bfloat16)
    t = time.time()
    bf = [encb(px[:, f].to(torch.bfloat16)).last_hidden_state for px in inputs for f in range(px.shape[1])]
    print("bf16 tower", time.time() - t, flush=True)
    stub = Stub(); stub.feats = f32; m.git.image_encoder = stub
    ids = frame_ids(inputs)
    toks, ref = [], []
    for i, fid in enumerate(ids):
        t = time.time()
        out = m.generate(pixel_values=fid, input_ids=torch.tensor([[101]]), max_new_tokens=NNEW, min_new_tokens=NNEW,
                         do_sample=False, num_beams=1, suppress_tokens=[102], use_cache=True)
        seq = out[0]
        assert seq.shape[0] == NNEW + 1, seq.shape
        toks.append(seq)
        ref.append(forward_logits(m, fid, seq))
        print("gen", i, seq.tolist(), time.time() - t, flush=True)
    torch.save({"f32": f32, "bf16": bf, "toks": toks, "ref": ref}, CACHE)


def forward_logits(m, fid, seq):
    """Teacher-forced text logits at the NNEW positions predicting generated tokens ([101]+g1..g19)."""
    out = m(input_ids=seq[None, :NNEW], pixel_values=fid, use_cache=False, logits_to_keep=NNEW)
    return out.logits[0].float()


def bf16_round(x):
    return x.to(torch.bfloat16).to(torch.float32)


def quant_int8(w, scheme="absmax"):
    """Returns dequantised f32 weight. scheme: absmax (bf16 scale), absmax_f32scale, mse (bf16 scale)."""
    amax = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    if scheme in ("absmax", "absmax_f32scale"):
        s = amax / 127
        if scheme == "absmax":
            s = bf16_round(s)
        return torch.clamp(torch.round(w / s), -127, 127) * s
    if scheme == "mse":
        best, besterr = None, None
        for r in [0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00]:
            s = bf16_round(amax * r / 127)
            d = torch.clamp(torch.round(w / s), -127, 127) * s
            e = ((w - d) ** 2).sum(1, keepdim=True)
            if best is None:
                best, besterr = d, e
            else:
                sel = e < besterr
                best = torch.where(sel, d, best); besterr = torch.where(sel, e, besterr)
        return best
    if scheme.startswith("group"):  # per-(row, group of G input columns) absmax scale, bf16-rounded
        G = int(scheme[5:]); o, i = w.shape
        wg = w.view(o, i // G, G)
        s = bf16_round(wg.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 127)
        return (torch.clamp(torch.round(wg / s), -127, 127) * s).view(o, i)
    raise ValueError(scheme)


class Runner:
    def __init__(self):
        self.m = load()
        c = torch.load(CACHE)
        self.c = c
        self.stub = Stub(); self.m.git.image_encoder = self.stub
        self.ids = frame_ids(make_inputs())
        self.lin = {}
        for i, layer in enumerate(self.m.git.encoder.layer):
            for k, path in KINDS.items():
                mod = layer
                for p in path.split("."):
                    mod = getattr(mod, p)
                self.lin[(i, k)] = mod
        self.lin["head"] = self.m.output
        self.orig = {n: l.weight.data.clone() for n, l in self.lin.items()}
        self.qcache = {}
        self.hooks = []

    def nparams(self, names):
        return sum(self.orig[n].numel() for n in names)

    def configure(self, mode, bf16_set=(), scheme="absmax", act_bf16=True, tower="bf16"):
        """mode: 'f32' or 'int8'. Linears in bf16_set get bf16 weights; others int8 (scheme)."""
        for h in self.hooks: h.remove()
        self.hooks = []
        for n, l in self.lin.items():
            w = self.orig[n]
            if mode == "f32":
                l.weight.data = w.clone(); continue
            if n in bf16_set:
                l.weight.data = bf16_round(w)
            else:
                key = (n, scheme)
                if key not in self.qcache:
                    self.qcache[key] = quant_int8(w, scheme)
                l.weight.data = self.qcache[key]
            if act_bf16:
                self.hooks.append(l.register_forward_pre_hook(lambda mod, args: (bf16_round(args[0]),)))
        self.stub.feats = [f.float() for f in self.c[tower]]

    @torch.no_grad()
    def evaluate(self, model=None):
        m = model or self.m
        errs, agree = [], []
        for fid, seq, ref in zip(self.ids, self.c["toks"], self.c["ref"]):
            lg = forward_logits(m, fid, seq)
            errs.append((lg - ref).norm(dim=-1) / ref.norm(dim=-1))
            agree.append((lg.argmax(-1) == seq[1:NNEW + 1]).float())
        e = torch.cat(errs); a = torch.cat(agree)
        per_in = [x.mean().item() for x in errs]
        return {"mean": e.mean().item(), "max": e.max().item(), "top1": a.mean().item(), "per_input": per_in}


def log(name, r, extra_bytes=0):
    r = dict(r); r["name"] = name; r["extra_MB"] = extra_bytes / 1e6; r["t"] = time.strftime("%H:%M:%S")
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != "per_input"}), flush=True)
    with open(RES, "a") as f:
        f.write(json.dumps(r) + "\n")


def group(R, g):
    if g == "head": return ["head"]
    if g.startswith("L"): return [(int(g[1:]), k) for k in KINDS]
    if g in KINDS: return [(i, g) for i in range(6)]
    if ":" in g:  # e.g. 3:intermediate
        i, k = g.split(":"); return [(int(i), k)]
    raise ValueError(g)


def run_set(R, groups, name=None, **kw):
    names = set()
    for g in groups: names |= set(group(R, g))
    R.configure("int8", bf16_set=names, **kw)
    log(name or ("bf16{" + "+".join(groups) + "}"), R.evaluate(), R.nparams(names))


def main():
    ph = sys.argv[1]
    if ph == "prep":
        prep(); return
    R = Runner()
    if ph == "base":
        R.configure("f32", tower="f32"); log("f32_self_check", R.evaluate())
        mb = copy.deepcopy(R.m).to(torch.bfloat16)
        R.stub.feats = R.c["bf16"]  # bf16 tower output, kept bf16
        mb.git.image_encoder = R.stub
        log("bf16_whole_model", R.evaluate(mb)); del mb
        R.configure("int8"); log("fast_baseline", R.evaluate())
    elif ph == "sens":
        for g in ["head"] + [f"L{i}" for i in range(6)] + list(KINDS):
            run_set(R, [g])
    elif ph == "schemes":
        R.configure("int8", scheme="mse"); log("int8_mse_scale", R.evaluate())
        R.configure("int8", scheme="absmax_f32scale"); log("int8_f32_scale", R.evaluate())
        R.configure("int8", act_bf16=False); log("int8_f32_activations", R.evaluate())
        R.configure("int8", act_bf16=False, tower="f32"); log("int8_f32_act_f32_tower", R.evaluate())
        R.configure("f32", tower="bf16"); log("f32_decoder_bf16_tower", R.evaluate())
    elif ph == "groups":  # group-wise scales; extra bytes = 2-byte bf16 scale per group vs per row
        for G in [128, 64, 32]:
            R.configure("int8", scheme=f"group{G}")
            extra = sum(2 * (w.numel() // G - w.shape[0]) for w in R.orig.values())
            log(f"int8_group{G}_scale", R.evaluate(), extra)
    elif ph == "combo":  # hybrid: group-scaled int8 + some bf16 groups
        for G, groups in [(128, ["value"]), (128, ["3:value", "2:value"]), (64, ["3:value", "2:value"])]:
            names = set()
            for g in groups: names |= set(group(R, g))
            R.configure("int8", bf16_set=names, scheme=f"group{G}")
            extra = R.nparams(names) + sum(2 * (w.numel() // G - w.shape[0]) for n, w in R.orig.items() if n not in names)
            log(f"int8_group{G}+bf16{{{'+'.join(groups)}}}", R.evaluate(), extra)
    elif ph == "custom":  # python study.py custom head,L0 L5,value ...
        for arg in sys.argv[2:]:
            run_set(R, arg.split(","))


if __name__ == "__main__":
    main()
