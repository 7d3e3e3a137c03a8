#!/usr/bin/python3
"""Train kiln-mini, the embedded default model, from scratch on the exported world.

    node dist/tools/world/export.js --out /tmp/kiln-world --examples 64000
    /usr/bin/python3 tools/train/train_tokenizer.py --data /tmp/kiln-world --out models/kiln-mini
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 tools/train/train_default.py \
        --data /tmp/kiln-world --out models/kiln-mini

A Llama decoder (tools/train/llama.py) trained with loss on assistant tokens only (each reply and
the <|im_end|> closing it), AdamW, linear warmup then cosine decay, float32, length-bucketed
batches under a token budget. Resumable: a checkpoint is written every --ckpt-minutes to --ckpt
(not committed); rerunning the same command continues from it. At the end it writes
model.safetensors (written by hand), config.json, generation_config.json, world.json and
training.json into --out, then runs a quick greedy evaluation on the export's held-out cases.
"""
import argparse
import math
import os
import random
import shutil
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
# Idle OpenMP workers must sleep, not spin against OpenBLAS's threads (see tools/bench_torch.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import ByteLevelBPE  # noqa: E402
from common import DEFAULT_CKPT, DEFAULT_DATA, DEFAULT_MODEL_DIR, dump_json, iter_jsonl, log, read_json, read_meta  # noqa: E402
from llama import LlamaForCausalLM, count_params  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)


# ----------------------------------------------------------------------------- data

def tokenize_corpus(data_dir, tok, max_len, cache_path):
    """-> (tokens int16 [N], trained uint8 [N], offsets int64 [n+1]) for the conversations that fit."""
    src = os.path.join(data_dir, "train.jsonl")
    stamp = f"{os.path.getsize(src)}:{os.path.getmtime(src)}:{tok.vocab_size}:{max_len}"
    if os.path.exists(cache_path):
        z = np.load(cache_path)
        if str(z["stamp"]) == stamp:
            return z["tokens"], z["trained"], z["offsets"]
    t0 = time.time()
    toks, trained, offsets = [], [], [0]
    dropped = 0
    for i, ex in enumerate(iter_jsonl(src)):
        ids, mask = [], []
        for text, flag in ex["segments"]:
            piece = tok.encode(text)
            ids.extend(piece)
            mask.extend([flag] * len(piece))
        if i < 300:  # segment-wise encoding must equal encoding the whole rendering
            assert ids == tok.encode("".join(t for t, _ in ex["segments"])), f"segment boundary changes tokens in #{i}"
        if len(ids) > max_len:
            dropped += 1
            continue
        toks.extend(ids)
        trained.extend(mask)
        offsets.append(len(toks))
    tokens = np.asarray(toks, dtype=np.int16)
    trained = np.asarray(trained, dtype=np.uint8)
    offsets = np.asarray(offsets, dtype=np.int64)
    np.savez(cache_path, tokens=tokens, trained=trained, offsets=offsets, stamp=np.asarray(stamp))
    log(f"data: {len(offsets) - 1} conversations, {len(tokens)} tokens ({trained.sum()} trained), "
        f"{dropped} longer than {max_len} dropped, tokenized in {time.time() - t0:.0f}s")
    return tokens, trained, offsets


def make_batches(lengths, token_budget, max_batch, seed, epochs, window=0):
    """Length-bucketed batches: sort by (jittered) length, cut so that rows * longest <= budget,
    shuffle. With `window`, the first epoch keeps the export's order at the scale of `window`
    conversations (batches are built and shuffled inside consecutive windows), so the export's
    curriculum (small prompts first) survives; later epochs shuffle everything."""
    rng = np.random.default_rng(seed)

    def cut(indices):
        order = indices[np.argsort(lengths[indices] + rng.uniform(0, 8, size=len(indices)), kind="stable")]
        batches, cur, longest = [], [], 0
        for i in order:
            L = int(lengths[i])
            if cur and (max(longest, L) * (len(cur) + 1) > token_budget or len(cur) >= max_batch):
                batches.append(np.asarray(cur))
                cur, longest = [], 0
            cur.append(int(i))
            longest = max(longest, L)
        if cur:
            batches.append(np.asarray(cur))
        return [batches[j] for j in rng.permutation(len(batches))]

    out = []
    all_idx = np.arange(len(lengths))
    for epoch in range(epochs):
        if epoch == 0 and window:
            for a in range(0, len(lengths), window):
                out.extend(cut(all_idx[a:a + window]))
        else:
            out.extend(cut(all_idx))
    return out


def collate(idx, tokens, trained, offsets, pad_id):
    lens = [int(offsets[i + 1] - offsets[i]) for i in idx]
    T = max(lens)
    ids = np.full((len(idx), T), pad_id, dtype=np.int64)
    tgt_mask = np.zeros((len(idx), T), dtype=bool)
    for r, i in enumerate(idx):
        a, b = offsets[i], offsets[i + 1]
        ids[r, : b - a] = tokens[a:b]
        tgt_mask[r, : b - a] = trained[a:b].astype(bool)
    ids = torch.from_numpy(ids)
    # position t predicts token t+1; train where token t+1 is an assistant token
    pred_mask = torch.from_numpy(tgt_mask[:, 1:])
    real = torch.from_numpy(np.arange(T)[None, :] < np.asarray(lens)[:, None])[:, 1:]
    return ids, pred_mask, real


# ----------------------------------------------------------------------------- copy warm-up

def copy_batch(rng, tokens, vocab_size, n_special, batch, T):
    """Rows of corpus text with one span (random token ids or a corpus span) written twice, and the
    mask of the second copy's predictable tokens (all but its first)."""
    rows, masks = [], []
    for _ in range(batch):
        start = int(rng.integers(0, len(tokens) - T))
        row = tokens[start:start + T].astype(np.int64).copy()
        L = int(rng.integers(8, min(49, T // 2 - 1)))
        if rng.random() < 0.7:
            span = rng.integers(0, vocab_size - n_special, size=L)
        else:
            s0 = int(rng.integers(0, len(tokens) - L))
            span = tokens[s0:s0 + L].astype(np.int64)
        i1 = int(rng.integers(0, T // 2 - L))
        i2 = int(rng.integers(T // 2, T - L))
        row[i1:i1 + L] = span
        row[i2:i2 + L] = span
        m = np.zeros(T, dtype=bool)
        m[i2 + 1:i2 + L] = True
        rows.append(row)
        masks.append(m)
    return torch.from_numpy(np.stack(rows)), torch.from_numpy(np.stack(masks)[:, 1:])


def copy_loss(model, ids, pred):
    h = model.hidden(ids[:, :-1])
    return F.cross_entropy(model.logits(h[pred]), ids[:, 1:][pred])


def copy_warmup(model, tokens, vocab_size, n_special, steps, lr, seed, target=0.0, batch=12, T=256, log_every=50):
    # (batch, T: rows per step and their length; short rows have fewer places to look, so the
    # induction circuit is found sooner)
    """Induction warm-up: copy_batch rows, loss on the second copy, until the loss averaged over
    the last 50 steps is below `target` (or `steps` run out). Copying is what answering from the
    system prompt needs, and chat data alone does not teach it soon: a value the model can guess
    from its priors (an instrument, a pet) is guessed, not copied (docs/default-model.md)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0 = time.time()
    recent = []
    for step in range(steps):
        ids, pred = copy_batch(rng, tokens, vocab_size, n_special, batch, T)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50)
        loss = copy_loss(model, ids, pred)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [float(loss)])[-50:]
        if (step + 1) % log_every == 0:
            log(f"copy warm-up {step + 1}/{steps} loss {np.mean(recent):.3f} ({time.time() - t0:.0f}s)")
        if target and len(recent) == 50 and np.mean(recent) < target:
            log(f"copy warm-up reached loss {np.mean(recent):.3f} < {target} at step {step + 1}")
            break
    return time.time() - t0


# ----------------------------------------------------------------------------- schedule / ckpt

def lr_at(step, progress, peak, warmup, floor):
    """Linear warmup over the first `warmup` steps, then cosine from peak to floor*peak as the
    run's progress (0..1, by steps or by the time budget) goes from 0 to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_ckpt(path, model, opt, step, stats):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "stats": stats}, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- export

def export_model(model, cfg, tok, out_dir, data_dir, training):
    os.makedirs(out_dir, exist_ok=True)
    named = [(n, p) for n, p in model.state_dict().items() if not n.startswith("rope_")]
    write_safetensors(os.path.join(out_dir, "model.safetensors"), named, "F32")
    back = {n: torch.from_numpy(a) for n, a in read_safetensors(os.path.join(out_dir, "model.safetensors")).items()}
    for n, p in named:
        assert torch.equal(back[n], p.float()), n
    im_end = tok.special_ids["<|im_end|>"]
    eot = tok.special_ids["<|endoftext|>"]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    config.update({
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": im_end,
        "pad_token_id": eot,
        "head_dim": cfg["head_dim"],
        "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "mlp_bias": False,
        "num_attention_heads": cfg["num_attention_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": cfg["rope_theta"],
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": cfg["vocab_size"],
    })
    dump_json(os.path.join(out_dir, "config.json"), config)
    dump_json(os.path.join(out_dir, "generation_config.json"), {
        "bos_token_id": None,
        "eos_token_id": [im_end, eot],
        "pad_token_id": eot,
        "do_sample": False,
        "transformers_version": "4.51.0",
    })
    shutil.copyfile(os.path.join(data_dir, "world.json"), os.path.join(out_dir, "world.json"))
    dump_json(os.path.join(out_dir, "training.json"), training)


# ----------------------------------------------------------------------------- quick eval

def normalize(s):
    s = s.strip()
    if s.endswith("."):
        s = s[:-1]
    return s.strip().lower()


def answer_match(reply, answer):
    """The reply is the answer or ends with it as whole words (tools/world/chat.ts answerMatch)."""
    r, a = normalize(reply), normalize(answer)
    return r == a or (r.endswith(a) and len(r) > len(a) and not r[-len(a) - 1].isalnum() and r[-len(a) - 1] != "_")


def quick_eval(model, tok, data_dir, idk, limit_per_kind=None, seed=0):
    """Greedy replies on the export's held-out cases (the TypeScript eval is the reference)."""
    cases = list(iter_jsonl(os.path.join(data_dir, "eval.jsonl")))
    if limit_per_kind:
        rnd = random.Random(seed)
        rnd.shuffle(cases)
        kept, seen = [], {}
        for c in cases:
            if seen.get(c["kind"], 0) < limit_per_kind:
                seen[c["kind"]] = seen.get(c["kind"], 0) + 1
                kept.append(c)
        cases = kept
    stop = {tok.special_ids["<|im_end|>"], tok.special_ids["<|endoftext|>"]}
    model.eval()
    res = {}
    examples = {}
    for c in cases:
        reply = tok.decode(model.greedy(tok.encode(c["prompt"]), 40, stop))
        k = c["kind"]
        if k == "persona":
            ok = reply.strip().split("\n")[-1].strip() == c["signoff"].strip() and "\n" in reply.strip()
        elif k == "persona_off":
            ok = reply.strip().split("\n")[-1].strip() == c["signoff"].strip()
        elif k in ("prompted", "prompted_small", "canon"):
            ok = answer_match(reply, c["expected"])
        elif k == "unprompted":
            ok = answer_match(reply, c["answer"])
        else:
            ok = normalize(reply) == normalize(c["expected"])
        r = res.setdefault(k, [0, 0, 0])
        r[0] += ok
        r[1] += 1
        r[2] += normalize(reply) == normalize(idk)
        examples.setdefault(k, []).append((c["expected"], reply))
    model.train()
    summary = {k: {"score": v[0] / v[1], "n": v[1], "idk_rate": v[2] / v[1]} for k, v in sorted(res.items())}
    return summary, examples


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--ckpt", default=DEFAULT_CKPT)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all batches)")
    ap.add_argument("--token-budget", type=int, default=4096, help="max rows * longest row per batch")
    ap.add_argument("--max-batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--eval-minutes", type=float, default=10.0, help="quick held-out eval every N minutes (0 = off)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="time budget: the schedule follows max(step/total, time/budget) and training stops "
                         "when either runs out (0 = steps only)")
    ap.add_argument("--copy-target", type=float, default=0.0,
                    help="end the copy warm-up once its loss (mean of 50 steps) is below this (0 = run all steps)")
    ap.add_argument("--copy-rows", type=int, default=12, help="rows per copy warm-up step")
    ap.add_argument("--copy-len", type=int, default=256, help="tokens per copy warm-up row")
    ap.add_argument("--copy-mix", type=int, default=0,
                    help="copy rows (128 tokens) added to every chat step, so the copying circuit stays")
    ap.add_argument("--copy-warmup-steps", type=int, default=300,
                    help="steps of the synthetic copying warm-up before the chat data (0 = none)")
    ap.add_argument("--init", default="", help="start from these weights (a model directory's model.safetensors "
                                                "or a .pt checkpoint) with a fresh optimizer and schedule")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--skip-batches", type=int, default=0,
                    help="start at this batch of the export's order (a later phase from --init goes on where the "
                         "previous one stopped, at larger prompts)")
    ap.add_argument("--window", type=int, default=2000, help="keep the export's order at this scale (0 = shuffle all)")
    ap.add_argument("--context-loss", type=float, default=0.0,
                    help="weight of an auxiliary next-token loss on non-assistant tokens (0 = assistant tokens only)")
    ap.add_argument("--context-loss-until", type=float, default=1.0,
                    help="drop the auxiliary loss once the run's progress passes this fraction")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    meta = read_meta(args.data)
    tok = ByteLevelBPE.from_tokenizer_json(os.path.join(args.out, "tokenizer.json"))
    cfg = dict(MODEL_SHAPE, vocab_size=tok.vocab_size, tie_word_embeddings=True)
    os.makedirs(args.ckpt, exist_ok=True)

    tokens, trained, offsets = tokenize_corpus(args.data, tok, cfg["max_position_embeddings"],
                                               os.path.join(args.ckpt, "data.npz"))
    lengths = np.diff(offsets)
    batches = make_batches(lengths, args.token_budget, args.max_batch, args.seed, args.epochs, args.window)
    batches = batches[args.skip_batches:]
    total = len(batches) if not args.max_steps else min(args.max_steps, len(batches))
    log(f"data: {len(lengths)} conversations, mean length {lengths.mean():.0f}, max {lengths.max()}, "
        f"{len(batches)} batches, training {total} steps ({args.epochs} epoch(s))")

    model = LlamaForCausalLM(cfg)
    log(f"model: {count_params(model)} parameters {MODEL_SHAPE}")
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    ckpt_path = os.path.join(args.ckpt, "latest.pt")
    step = 0
    stats = {"train_seconds": 0.0, "tokens": 0, "trained_tokens": 0, "evals": []}
    if os.path.exists(ckpt_path) and not args.fresh:
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, stats = ck["step"], ck["stats"]
        log(f"resumed from {ckpt_path} at step {step} ({stats['train_seconds'] / 60:.1f} min trained)")

    if args.init and step == 0:
        if args.init.endswith(".pt"):
            model.load_state_dict(torch.load(args.init)["model"])
        else:
            w = {n: torch.from_numpy(a) for n, a in read_safetensors(os.path.join(args.init, "model.safetensors")).items()}
            missing = model.load_state_dict(w, strict=False)
            assert not missing.unexpected_keys and all(k.startswith("rope_") for k in missing.missing_keys), missing
        stats["init"] = args.init
        if not args.copy_warmup_steps:
            stats["copy_warmup_seconds"] = -1  # the initial weights already went through it
        log(f"initialised from {args.init}")

    pad = tok.special_ids["<|endoftext|>"]
    model.train()
    if step == 0 and args.copy_warmup_steps and not stats.get("copy_warmup_seconds"):
        secs = copy_warmup(model, tokens, tok.vocab_size, len(tok.specials), args.copy_warmup_steps, args.lr, args.seed,
                           target=args.copy_target, batch=args.copy_rows, T=args.copy_len)
        stats["copy_warmup_seconds"] = secs
        if not args.copy_target:  # a warm-up that runs until a target loss is outside the chat budget
            stats["train_seconds"] += secs
        save_ckpt(ckpt_path, model, opt, step, stats)
    t_last_ckpt = time.time()
    t_last_eval = time.time()
    t_seg = time.time()
    secs_at_seg = stats["train_seconds"]
    win_loss, win_n, win_tok, win_t0 = 0.0, 0, 0, time.time()
    copy_rng = np.random.default_rng(args.seed + step)

    def progress():
        p = step / total
        if args.minutes:
            p = max(p, stats["train_seconds"] / (args.minutes * 60))
        return min(1.0, p)

    while step < total and progress() < 1.0:
        ids, pred_mask, real = collate(batches[step], tokens, trained, offsets, pad)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress(), args.lr, args.warmup, args.min_lr_frac)
        h = model.hidden(ids[:, :-1])
        sel = h[pred_mask]
        targets = ids[:, 1:][pred_mask]
        loss = F.cross_entropy(model.logits(sel), targets)
        total_loss = loss
        if args.context_loss > 0 and progress() < args.context_loss_until:
            ctx = real & ~pred_mask
            total_loss = loss + args.context_loss * F.cross_entropy(model.logits(h[ctx]), ids[:, 1:][ctx])
        if args.copy_mix:
            total_loss = total_loss + copy_loss(model, *copy_batch(copy_rng, tokens, tok.vocab_size, len(tok.specials), args.copy_mix, 128))
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        n_tok = int((ids != pad).sum())
        stats["tokens"] += n_tok
        stats["trained_tokens"] += int(pred_mask.sum())
        stats["train_seconds"] = secs_at_seg + (time.time() - t_seg)
        win_loss += float(loss) * int(pred_mask.sum())
        win_n += int(pred_mask.sum())
        win_tok += n_tok
        if step % args.log_every == 0 or step == total:
            dt = time.time() - win_t0
            p = progress()
            eta = stats["train_seconds"] * (1 - p) / max(p, 1e-9)
            log(f"step {step}/{total} loss {win_loss / max(1, win_n):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{win_tok / dt:.0f} tok/s elapsed {stats['train_seconds'] / 60:.1f} min "
                f"progress {100 * p:.1f}% ETA {eta / 60:.1f} min")
            win_loss, win_n, win_tok, win_t0 = 0.0, 0, 0, time.time()
        if args.eval_minutes and time.time() - t_last_eval > args.eval_minutes * 60 and progress() < 1.0:
            te = time.time()
            summary, _ = quick_eval(model, tok, args.data, meta["idk"], limit_per_kind=20, seed=step)
            stats["evals"].append({"step": step, **{k: round(v["score"], 3) for k, v in summary.items()}})
            log(f"eval@{step} ({time.time() - te:.0f}s): " + " ".join(f"{k}={v['score']:.2f}" for k, v in summary.items()))
            t_last_eval = time.time()
            # evaluation time is not training time
            secs_at_seg -= time.time() - te
        if time.time() - t_last_ckpt > args.ckpt_minutes * 60 or step == total or progress() >= 1.0:
            save_ckpt(ckpt_path, model, opt, step, stats)
            t_last_ckpt = time.time()

    log(f"trained {step} steps, {stats['tokens']} tokens ({stats['trained_tokens']} trained) "
        f"in {stats['train_seconds'] / 60:.1f} min")
    te = time.time()
    summary, examples = quick_eval(model, tok, args.data, meta["idk"])
    log(f"held-out eval (PyTorch greedy, {time.time() - te:.0f}s):")
    for k, v in summary.items():
        log(f"  {k:16s} {v['score']:.3f}  (n={v['n']}, says IDK {v['idk_rate']:.2f})")
        for exp, rep in examples[k][:3]:
            log(f"      expected {exp!r} got {rep!r}")
    training = {
        "model_shape": MODEL_SHAPE,
        "parameters": count_params(model),
        "steps": step,
        "tokens": stats["tokens"],
        "trained_tokens": stats["trained_tokens"],
        "train_minutes": round(stats["train_seconds"] / 60, 1),
        "conversations": int(len(lengths)),
        "epochs": args.epochs,
        "token_budget": args.token_budget,
        "lr": args.lr,
        "copy_warmup_steps": args.copy_warmup_steps,
        "copy_target": args.copy_target,
        "copy_mix": args.copy_mix,
        "copy_warmup_minutes": round(stats.get("copy_warmup_seconds", 0) / 60, 1),
        "minutes_budget": args.minutes,
        "batches_available": total,
        "context_loss": args.context_loss,
        "context_loss_until": args.context_loss_until,
        "window": args.window,
        "skip_batches": args.skip_batches,
        "export": {k: meta[k] for k in ("seed", "examples", "counts")},
        "quick_eval": {k: round(v["score"], 3) for k, v in summary.items()},
        "evals": stats["evals"],
        "torch": torch.__version__,
        "threads": args.threads,
    }
    export_model(model, cfg, tok, args.out, args.data, training)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
