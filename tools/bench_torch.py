#!/usr/bin/env python3
"""PyTorch reference benchmark for kiln's `npm run bench`.

Usage:  python3 tools/bench_torch.py '<json config>'
Prints exactly one JSON line on stdout (results, or {"error": ...} with exit code 1).
See tools/bench_torch.md for the config keys and what is measured.
"""
import json
import resource
import os
import sys
import time


def _parse_args():
    try:
        if len(sys.argv) < 2:
            raise ValueError("usage: bench_torch.py '<json config>'")
        cfg = json.loads(sys.argv[1])
        if not isinstance(cfg, dict):
            raise ValueError("config must be a JSON object")
        return cfg
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        print(json.dumps({"error": "bad config: %s" % e}), flush=True)
        sys.exit(2)


CFG = _parse_args()
THREADS = int(CFG.get("threads", 1))
# Must happen before torch (and with it OpenBLAS / OpenMP) is loaded: torch.set_num_threads
# only sizes torch's own OpenMP pool, a pthread OpenBLAS reads its count from the environment.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
# libgomp's default is to spin-wait after every parallel region; those spinning OpenMP workers
# then fight OpenBLAS's own pthreads for the same cores (measured on a 2-core VM: prefill ~4x and
# the bake step ~5x slower). PASSIVE makes idle OpenMP workers sleep. The caller may override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ctypes  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(THREADS)
# "device": "cuda" times the same model on a GPU (a lent device machine's PyTorch, beside kiln's
# webgpu backend). float32 without TF32, as WebGPU computes.
DEVICE = torch.device(CFG.get("device", "cpu"))
if DEVICE.type != "cpu":
    torch.set_default_device(DEVICE)  # torch >= 2.0: every tensor below is made there
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def sync():
    """GPU work is queued: a timer must wait for it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ----------------------------------------------------------------------------- BLAS info

def blas_info():
    """Find the BLAS library actually mapped into this process (Debian's torch says only
    BLAS_INFO=generic, i.e. whatever libblas.so.3 the alternatives system points at)."""
    info = {"blas": None, "blas_lib": None, "blas_config": None, "blas_threads": None}
    # Force BLAS to be loaded and used once.
    torch.ones(8, 8, device="cpu") @ torch.ones(8, 8, device="cpu")
    libs = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[-1].startswith("/"):
                    libs.append(parts[-1])
    except OSError:
        pass
    libs = list(dict.fromkeys(libs))
    for key in ("openblas", "mkl_rt", "libmkl", "blis", "atlas", "libblas"):
        hit = next((p for p in libs if key in os.path.basename(p).lower()), None)
        if hit:
            info["blas"] = {"mkl_rt": "mkl", "libmkl": "mkl", "libblas": "reference-or-unknown"}.get(key, key)
            info["blas_lib"] = os.path.realpath(hit)
            break
    if info["blas"] == "openblas":
        try:
            lib = ctypes.CDLL(info["blas_lib"])
            lib.openblas_get_config.restype = ctypes.c_char_p
            info["blas_config"] = lib.openblas_get_config().decode()
            info["blas_threads"] = int(lib.openblas_get_num_threads())
        except (OSError, AttributeError):
            pass
    if info["blas"] is None:
        cfg = torch.__config__.show()
        for tok in cfg.replace(",", " ").split():
            if tok.startswith("BLAS_INFO="):
                info["blas"] = tok.split("=", 1)[1]
    return info


def matmul_gflops(n=1024, iters=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    dt = (time.perf_counter() - t) / iters
    return 2.0 * n ** 3 / dt / 1e9


# ----------------------------------------------------------------------------- model

class Llama:
    """Plain Llama decoder: RMSNorm, RoPE (rotate_half layout), GQA, SwiGLU, optional tied head.
    Weights are plain tensors (std 0.02, float32), stored HF-style as [out, in]."""

    def __init__(self, cfg, max_pos):
        self.h = cfg["hidden"]
        self.n_layers = cfg["layers"]
        self.n_heads = cfg["heads"]
        self.n_kv = cfg.get("kv_heads", self.n_heads)
        self.hd = cfg.get("head_dim") or self.h // self.n_heads
        self.ffn = cfg["ffn"]
        self.vocab = cfg["vocab"]
        self.eps = float(cfg.get("rms_eps", 1e-5))
        theta = float(cfg.get("rope_theta", 10000.0))
        self.groups = self.n_heads // self.n_kv
        std = 0.02

        def w(*shape):
            return torch.randn(*shape) * std

        self.embed = w(self.vocab, self.h)
        self.lm_head = self.embed if cfg.get("tied", True) else w(self.vocab, self.h)
        self.final_norm = torch.ones(self.h)
        self.layers = []
        for _ in range(self.n_layers):
            self.layers.append({
                "in_norm": torch.ones(self.h),
                "post_norm": torch.ones(self.h),
                "q_proj": w(self.n_heads * self.hd, self.h),
                "k_proj": w(self.n_kv * self.hd, self.h),
                "v_proj": w(self.n_kv * self.hd, self.h),
                "o_proj": w(self.h, self.n_heads * self.hd),
                "gate_proj": w(self.ffn, self.h),
                "up_proj": w(self.ffn, self.h),
                "down_proj": w(self.h, self.ffn),
            })
        inv = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()  # [max_pos, hd]
        self.lora = None  # list (per layer) of {target: (A [r,in], B [out,r])}
        self.lora_scale = 0.0

    def n_params(self):
        n = self.embed.numel() + self.final_norm.numel()
        if self.lm_head is not self.embed:
            n += self.lm_head.numel()
        for layer in self.layers:
            n += sum(t.numel() for t in layer.values())
        return n

    def add_lora(self, targets, rank, alpha):
        self.lora_scale = alpha / rank
        self.lora = []
        params = []
        for layer in self.layers:
            entry = {}
            for t in targets:
                out_f, in_f = layer[t].shape
                a = torch.empty(rank, in_f)
                torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                # Real LoRA starts B at 0; small random values keep the gradient path realistic.
                b = torch.randn(out_f, rank) * 1e-3
                a.requires_grad_(True)
                b.requires_grad_(True)
                entry[t] = (a, b)
                params += [a, b]
            self.lora.append(entry)
        return params

    def _rms(self, x, weight):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * weight

    @staticmethod
    def _rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def _rope(self, x, pos, t):
        cos, sin = self.cos[pos:pos + t], self.sin[pos:pos + t]  # [T, hd] broadcast over [B,H,T,hd]
        return x * cos + self._rotate_half(x) * sin

    def _proj(self, x, li, name, use_lora):
        y = F.linear(x, self.layers[li][name])
        if use_lora and self.lora is not None:
            ab = self.lora[li].get(name)
            if ab is not None:
                a, b = ab
                y = y + F.linear(F.linear(x, a), b) * self.lora_scale
        return y

    def forward(self, tokens, cache=None, pos=0, use_lora=False, logits_from=None):
        """tokens [B,T] int64. cache: list of (k_buf, v_buf) [B,kv,max,hd] filled in place, or None.
        logits_from: only positions >= logits_from get logits (None: all); returns [B,T',V]."""
        bsz, t = tokens.shape
        x = F.embedding(tokens, self.embed)
        s = pos + t
        mask = None
        if t > 1:
            # causal over absolute positions: query i (abs pos+i) sees keys <= pos+i
            q_idx = torch.arange(pos, pos + t).unsqueeze(1)
            k_idx = torch.arange(s).unsqueeze(0)
            mask = torch.zeros(t, s).masked_fill(k_idx > q_idx, float("-inf"))
        scale = 1.0 / math.sqrt(self.hd)
        for li, layer in enumerate(self.layers):
            hn = self._rms(x, layer["in_norm"])
            q = self._proj(hn, li, "q_proj", use_lora).view(bsz, t, self.n_heads, self.hd).transpose(1, 2)
            k = self._proj(hn, li, "k_proj", use_lora).view(bsz, t, self.n_kv, self.hd).transpose(1, 2)
            v = self._proj(hn, li, "v_proj", use_lora).view(bsz, t, self.n_kv, self.hd).transpose(1, 2)
            q = self._rope(q, pos, t)
            k = self._rope(k, pos, t)
            if cache is not None:
                kb, vb = cache[li]
                kb[:, :, pos:s] = k
                vb[:, :, pos:s] = v
                k, v = kb[:, :, :s], vb[:, :, :s]
            # GQA without materialising repeated K/V: head h uses kv head h // groups.
            qg = q.reshape(bsz, self.n_kv, self.groups * t, self.hd)
            att = torch.matmul(qg, k.transpose(-1, -2)) * scale  # [B,kv,g*T,S]
            if mask is not None:
                att = (att.view(bsz, self.n_kv, self.groups, t, s) + mask).view(bsz, self.n_kv, self.groups * t, s)
            att = torch.softmax(att, dim=-1)
            o = torch.matmul(att, v)  # [B,kv,g*T,hd]
            o = o.view(bsz, self.n_heads, t, self.hd).transpose(1, 2).reshape(bsz, t, self.n_heads * self.hd)
            x = x + self._proj(o, li, "o_proj", use_lora)
            hn = self._rms(x, layer["post_norm"])
            g = self._proj(hn, li, "gate_proj", use_lora)
            u = self._proj(hn, li, "up_proj", use_lora)
            x = x + self._proj(F.silu(g) * u, li, "down_proj", use_lora)
        if logits_from is not None:
            x = x[:, logits_from:]
        x = self._rms(x, self.final_norm)
        return F.linear(x, self.lm_head)

    def new_cache(self, bsz, max_len):
        return [(torch.zeros(bsz, self.n_kv, max_len, self.hd), torch.zeros(bsz, self.n_kv, max_len, self.hd))
                for _ in range(self.n_layers)]


# ----------------------------------------------------------------------------- benches

def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out), out


def bench_generate(model, cfg):
    bsz = int(cfg.get("batch", 1))
    n_pre = int(cfg.get("prefill_tokens", 128))
    n_dec = int(cfg.get("decode_tokens", 32))
    repeats = int(cfg.get("repeats", 3))
    all_logits = cfg.get("prefill_logits", "last") == "all"
    prompt = torch.randint(0, model.vocab, (bsz, n_pre))
    max_len = n_pre + n_dec
    res = {}
    with torch.inference_mode():
        def prefill():
            cache = model.new_cache(bsz, max_len)
            logits = model.forward(prompt, cache=cache, pos=0, logits_from=None if all_logits else n_pre - 1)
            return cache, logits[:, -1].argmax(-1)

        med, runs = timed(prefill, repeats)
        res["prefill_s"] = med
        res["prefill_tok_s"] = bsz * n_pre / med
        res["prefill_runs_s"] = runs

        if n_dec > 0:
            state = {}

            def setup():
                state["cache"], state["next"] = prefill()

            def decode():
                cache, tok = state["cache"], state["next"]
                for i in range(n_dec):
                    logits = model.forward(tok.unsqueeze(1), cache=cache, pos=n_pre + i)
                    tok = logits[:, -1].argmax(-1)
                return tok

            runs = []
            for r in range(max(1, repeats) + 1):  # first run is the warm-up
                setup()
                sync()
                t = time.perf_counter()
                decode()
                sync()
                dt = time.perf_counter() - t
                if r > 0:
                    runs.append(dt)
            med = statistics.median(runs)
            res["decode_s"] = med
            res["decode_tok_s"] = bsz * n_dec / med
            res["decode_runs_s"] = runs
    return res


def kl_loss(t_logits, s_logits, topk):
    """Forward KL(teacher||student), summed over tokens, averaged over batch. [B,T,V] inputs."""
    bsz = t_logits.shape[0]
    log_ps = F.log_softmax(s_logits, dim=-1)
    if topk:
        vals, idx = t_logits.topk(int(topk), dim=-1)
        log_pt = F.log_softmax(vals, dim=-1)  # teacher top-K renormalised
        log_ps = log_ps.gather(-1, idx)
    else:
        log_pt = F.log_softmax(t_logits, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum()
    return kl / bsz


def bench_bake(model, bake, repeats_default):
    bsz = int(bake.get("batch", 1))
    seq = int(bake.get("seq", 128))
    plen = int(bake.get("prompt_len", 64))
    rank = int(bake.get("rank", 8))
    alpha = float(bake.get("alpha", 2 * rank))
    targets = list(bake.get("targets", ["q_proj", "k_proj", "v_proj", "o_proj"]))
    for t in targets:
        if t not in LINEAR_TARGETS:
            raise ValueError("unknown LoRA target %r" % t)
    steps = int(bake.get("steps", repeats_default))
    topk = bake.get("topk")
    lr = float(bake.get("lr", 1e-4))
    # Only the reply positions enter the loss; "all" computes the LM head on every position.
    all_logits = bake.get("logits", "reply") == "all"
    if not 0 <= plen < seq:
        raise ValueError("bake.prompt_len must be in [0, seq)")
    params = model.add_lora(targets, rank, alpha)
    opt = torch.optim.Adam(params, lr=lr)
    tokens = torch.randint(0, model.vocab, (bsz, seq))

    def step():
        # Teacher: base weights, no LoRA, no grad. (In prompt baking the teacher sees the prompt
        # in front, i.e. a longer sequence; here it sees the same `seq` tokens for simplicity.)
        with torch.no_grad():
            t_logits = model.forward(tokens, use_lora=False, logits_from=None if all_logits else plen)
        s_logits = model.forward(tokens, use_lora=True, logits_from=None if all_logits else plen)
        if all_logits:
            t_logits, s_logits = t_logits[:, plen:], s_logits[:, plen:]
        loss = kl_loss(t_logits, s_logits, topk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as kiln's trainer clips
        opt.step()
        return float(loss)

    med, runs = timed(step, steps)
    return {
        "bake_step_s": med,
        "bake_tok_s": bsz * (seq - plen) / med,
        "bake_runs_s": runs,
        "bake_lora_params": sum(p.numel() for p in params),
        "bake_teacher_seq": seq,
        "bake_logits": "all" if all_logits else "reply",
    }


def main():
    cfg = CFG
    torch.manual_seed(int(cfg.get("seed", 0)))
    out = {"torch": torch.__version__.split("+")[0], "threads": torch.get_num_threads(), "device": str(DEVICE)}
    if DEVICE.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(DEVICE)
    out.update(blas_info())
    out["openblas_env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                           if os.environ.get(k) is not None}
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    if cfg.get("matmul_check", True):
        out["matmul1024_gflops"] = matmul_gflops()
    bake = cfg.get("bake")
    max_pos = max(int(cfg.get("prefill_tokens", 128)) + int(cfg.get("decode_tokens", 32)),
                  int(bake.get("seq", 128)) if bake else 0)
    model = Llama(cfg, max_pos)
    out["params"] = model.n_params()
    t0 = time.perf_counter()
    out.update(bench_generate(model, cfg))
    if bake:
        out.update(bench_bake(model, bake, int(cfg.get("repeats", 3))))
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if DEVICE.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(DEVICE) / 2 ** 20
    for k, v in list(out.items()):
        if isinstance(v, float):
            out[k] = round(v, 6)
        elif isinstance(v, list) and v and isinstance(v[0], float):
            out[k] = [round(x, 6) for x in v]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one JSON line even on failure, for the calling bench
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
        sys.exit(1)
