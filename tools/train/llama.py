"""A plain Llama decoder (RMSNorm, RoPE rotate_half, GQA, SwiGLU, tied head) in PyTorch.

Parameter names follow Hugging Face LlamaForCausalLM so the state dict can be written to
model.safetensors as is (the tied lm_head is not stored).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rope_tables(head_dim, theta, n_pos):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hid, H, KV, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.H, self.KV, self.D = H, KV, D
        self.q_proj = nn.Linear(hid, H * D, bias=False)
        self.k_proj = nn.Linear(hid, KV * D, bias=False)
        self.v_proj = nn.Linear(hid, KV * D, bias=False)
        self.o_proj = nn.Linear(H * D, hid, bias=False)

    def forward(self, x, cos, sin, mask, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.KV, self.D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.KV, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:  # inference: append to this layer's (k, v) and attend over all of it
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        S = k.shape[2]
        rep = self.H // self.KV
        # GQA without repeating k/v: query head h uses kv head h // rep, so the rep query heads of
        # one kv head are stacked along the time axis and share one larger matmul.
        q = q.reshape(B, self.KV, rep * T, self.D)
        att = torch.matmul(q * (1.0 / math.sqrt(self.D)), k.transpose(-1, -2))  # [B, KV, rep*T, S]
        att = att.view(B, self.KV, rep, T, S) + mask
        att = torch.softmax(att, dim=-1).view(B, self.KV, rep * T, S)
        o = torch.matmul(att, v).view(B, self.H, T, self.D).transpose(1, 2).reshape(B, T, self.H * self.D)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hid, inter = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(hid, inter, bias=False)
        self.up_proj = nn.Linear(hid, inter, bias=False)
        self.down_proj = nn.Linear(inter, hid, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.get("tie_word_embeddings", True), "only the tied head is implemented"
        self.cfg = cfg
        self.model = Body(cfg)
        cos, sin = rope_tables(cfg["head_dim"], cfg["rope_theta"], cfg["max_position_embeddings"])
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std=0.02):
        n_layers = self.cfg["num_hidden_layers"]
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # GPT-2 style: residual projections scaled down with depth
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden(self, ids, pad_mask=None):
        """ids [B, T] -> final hidden states [B, T, hid]. pad_mask [B, T] bool (True = real) for
        right-padded batches: pads only ever sit after the real tokens, so the causal mask suffices
        for the real positions and pads are just ignored by the loss."""
        B, T = ids.shape
        x = self.model.embed_tokens(ids)
        cos = self.rope_cos[:T]
        sin = self.rope_sin[:T]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.model.norm(x)

    @torch.no_grad()
    def step(self, ids, caches):
        """Inference with a KV cache: ids [1, T] continue the sequence held in caches (one dict per
        layer, empty at the start). Returns the logits of the last position."""
        past = caches[0]["k"].shape[2] if caches[0].get("k") is not None else 0
        T = ids.shape[1]
        x = self.model.embed_tokens(ids)
        cos = self.rope_cos[past:past + T]
        sin = self.rope_sin[past:past + T]
        mask = torch.full((T, past + T), float("-inf")).triu(past + 1)
        for layer, cache in zip(self.model.layers, caches):
            x = layer(x, cos, sin, mask, cache)
        return self.logits(self.model.norm(x[:, -1]))

    @torch.no_grad()
    def greedy(self, prompt_ids, max_new, stop_ids):
        caches = [{} for _ in self.model.layers]
        logits = self.step(torch.tensor([prompt_ids]), caches)
        out = []
        limit = self.cfg["max_position_embeddings"]
        for _ in range(max_new):
            t = int(logits[0].argmax())
            if t in stop_ids:
                break
            out.append(t)
            if len(prompt_ids) + len(out) >= limit:
                break
            logits = self.step(torch.tensor([[t]]), caches)
        return out

    def logits(self, h):
        return h @ self.model.embed_tokens.weight.T

    def forward(self, ids):
        return self.logits(self.hidden(ids))


def count_params(model):
    return sum(p.numel() for p in model.parameters())
