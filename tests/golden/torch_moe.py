"""Independent PyTorch reference of the Switchyard MoE transformer (golden tests, PyTorch benchmark).

Written from the model definition (not from the C++ code):
  embedding -> L blocks -> final RMSNorm -> lm_head (untied unless tie_embeddings) -> logits [B*T, V]
  block:  h = x + attn(rmsnorm1(x)); out = h + ffn(rmsnorm2(h))
  attn:   q/k/v linear (bias if qkv_bias), RoPE rotate-half, GQA (q head h uses kv head h // (NH/NKV)),
          causal softmax(q k^T / sqrt(HD)) v, o_proj (no bias)
          packed rows (forward(..., doc_start=[B, T])): RoPE position t - doc_start[b, t], and query t
          sees keys doc_start[b, t] <= j <= t only (block-diagonal causal)
  ffn:    dense SwiGLU for l < first_dense_layers, else MoE (softmax router, top-k by probability,
          optional renormalisation, SwiGLU experts, optional sigmoid-gated shared expert)
  loss:   mean CE + aux_coef * mean_l aux_l + z_coef * mean_l z_l   (means over MoE layers)
          aux_l = E * sum_e (count_e / N) * P_e   (count_e: routed (token, k) slots, no gradient)
          z_l   = mean_t logsumexp_e(logits[t, e])^2

Mixed precision (forward only): forward(..., precision="bf16" | "fp16") emulates the rounding points of
core/precision.h on float64 values: rnd(x) rounds to the compute dtype (from the float32 value, ties to
even, fp16 overflow -> inf) and keeps x's dtype. Compute weights: every parameter rounded except the
router weights. Activation GEMMs (q/k/v, o_proj, every gate_up/down projection, shared_expert_gate,
lm_head): rnd(rnd(x) @ rnd(W)^T), then + rnd(bias) unrounded. Rounded also: the embedding rows, the
post-RoPE q/k/v, the attention output and the MoE layer output (once, after the combine and the shared
expert). Not rounded: RMSNorm outputs, residual adds, router logits (rnd(x) @ W_router^T in full
precision), softmax/top-k, the SwiGLU product, the loss terms. precision=None: no rounding at all.

Parameter names/shapes are the Hugging Face ones of core/params.cpp make_param_table (mixtral layout, or
qwen2_moe when there is a shared expert, a qkv bias or dense first layers).

Also here: a minimal safetensors reader/writer (F32, F64, I32, I64, BF16), HF config.json conversion,
seeded initialisation, AdamW param groups + LR schedule, and a training step.

Run with Debian's PyTorch 1.13 (/usr/bin/python3).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import struct
from collections import OrderedDict, namedtuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# config

MODEL_DEFAULTS = OrderedDict(
    vocab_size=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=0, max_seq_len=256,
    rope_theta=10000.0, rms_norm_eps=1e-5, qkv_bias=False, tie_embeddings=False, first_dense_layers=0,
    dense_ffn_size=1024, init_std=0.02)
MOE_DEFAULTS = OrderedDict(
    n_experts=8, top_k=2, expert_size=512, normalize_topk=True, shared_expert_size=0,
    aux_loss_coef=0.01, z_loss_coef=0.0,
    # model.moe.router.scoring; a fixed selection bias [E] (every MoE layer; None: none), moe/router.h
    router_scoring="softmax", selection_bias=None,
    # model.moe.router.top_p (0: off) and k_max: adaptive experts per token, moe/router.h
    router_top_p=0.0, router_k_max=0,
    # model.moe.router capacity (moe/capacity.h): 0 = dropless
    capacity_factor=0.0, min_capacity=4, drop_policy="position", importance="gate")
OPTIM_DEFAULTS = OrderedDict(
    lr=1e-3, min_lr=1e-4, warmup_steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
    grad_clip=1.0, decay_norms=False, decay_biases=False, decay_router=False, decay_embeddings=True)


def resolve_config(cfg: dict) -> dict:
    """Model config dict (ModelConfig field names, `moe` nested or flat) with defaults filled in."""
    out = copy.deepcopy(MODEL_DEFAULTS)
    moe = copy.deepcopy(MOE_DEFAULTS)
    for k, v in cfg.items():
        if k == "moe":
            for mk, mv in v.items():
                if mk not in moe:
                    raise KeyError(f"unknown moe config key {mk}")
                moe[mk] = mv
        elif k in out:
            out[k] = v
        elif k in moe:
            moe[k] = v
        else:
            raise KeyError(f"unknown model config key {k}")
    out["moe"] = moe
    if out["head_dim"] == 0:
        out["head_dim"] = out["d_model"] // out["n_heads"]
    assert out["n_heads"] % out["n_kv_heads"] == 0
    assert out["head_dim"] % 2 == 0
    assert 1 <= moe["top_k"] <= moe["n_experts"]
    assert 0 <= moe["router_top_p"] <= 1
    assert moe["router_top_p"] == 0 or 1 <= moe["router_k_max"] <= moe["n_experts"]
    return out


def resolve_optim(cfg: dict | None) -> dict:
    out = copy.deepcopy(OPTIM_DEFAULTS)
    for k, v in (cfg or {}).items():
        if k not in out:
            raise KeyError(f"unknown optim config key {k}")
        out[k] = v
    return out


def qwen_layout(c: dict) -> bool:
    return c["moe"]["shared_expert_size"] > 0 or bool(c["qkv_bias"]) or c["first_dense_layers"] > 0


def is_moe_layer(c: dict, l: int) -> bool:
    return l >= c["first_dense_layers"]


def n_moe_layers(c: dict) -> int:
    return sum(1 for l in range(c["n_layers"]) if is_moe_layer(c, l))


def param_table(cfg: dict):
    """[(name, shape, kind)] in the order of core/params.cpp make_param_table.
    kind: embedding | norm | linear | bias | router | expert."""
    c = resolve_config(cfg)
    C, HD, NH, NKV = c["d_model"], c["head_dim"], c["n_heads"], c["n_kv_heads"]
    qwen = qwen_layout(c)
    t = [("model.embed_tokens.weight", (c["vocab_size"], C), "embedding")]
    for l in range(c["n_layers"]):
        p = f"model.layers.{l}."
        t.append((p + "input_layernorm.weight", (C,), "norm"))
        t.append((p + "self_attn.q_proj.weight", (NH * HD, C), "linear"))
        t.append((p + "self_attn.k_proj.weight", (NKV * HD, C), "linear"))
        t.append((p + "self_attn.v_proj.weight", (NKV * HD, C), "linear"))
        if c["qkv_bias"]:
            t.append((p + "self_attn.q_proj.bias", (NH * HD,), "bias"))
            t.append((p + "self_attn.k_proj.bias", (NKV * HD,), "bias"))
            t.append((p + "self_attn.v_proj.bias", (NKV * HD,), "bias"))
        t.append((p + "self_attn.o_proj.weight", (C, NH * HD), "linear"))
        t.append((p + "post_attention_layernorm.weight", (C,), "norm"))
        if not is_moe_layer(c, l):
            Fd = c["dense_ffn_size"]
            t.append((p + "mlp.gate_proj.weight", (Fd, C), "linear"))
            t.append((p + "mlp.up_proj.weight", (Fd, C), "linear"))
            t.append((p + "mlp.down_proj.weight", (C, Fd), "linear"))
            continue
        m = c["moe"]
        I = m["expert_size"]
        mp = p + ("mlp." if qwen else "block_sparse_moe.")
        t.append((mp + "gate.weight", (m["n_experts"], C), "router"))
        for e in range(m["n_experts"]):
            x = f"{mp}experts.{e}."
            t.append((x + ("gate_proj.weight" if qwen else "w1.weight"), (I, C), "expert"))
            t.append((x + ("up_proj.weight" if qwen else "w3.weight"), (I, C), "expert"))
            t.append((x + ("down_proj.weight" if qwen else "w2.weight"), (C, I), "expert"))
        if m["shared_expert_size"] > 0:
            S = m["shared_expert_size"]
            t.append((mp + "shared_expert.gate_proj.weight", (S, C), "linear"))
            t.append((mp + "shared_expert.up_proj.weight", (S, C), "linear"))
            t.append((mp + "shared_expert.down_proj.weight", (C, S), "linear"))
            t.append((mp + "shared_expert_gate.weight", (1, C), "linear"))
    t.append(("model.norm.weight", (C,), "norm"))
    if not c["tie_embeddings"]:
        t.append(("lm_head.weight", (c["vocab_size"], C), "linear"))
    return t


# ----------------------------------------------------------------------------------------------
# mixed-precision emulation (core/precision.h): set for the duration of MoeTransformer.forward

_COMPUTE = None  # None (no rounding), "bf16" or "fp16"


@contextlib.contextmanager
def compute_precision(p):
    global _COMPUTE
    if p not in (None, "bf16", "fp16"):
        raise ValueError(f"precision {p!r} is not None, 'bf16' or 'fp16'")
    old, _COMPUTE = _COMPUTE, p
    try:
        yield
    finally:
        _COMPUTE = old


def rnd(x):
    """x rounded to the compute precision, in x's dtype: nearest, ties to even, from the float32 value
    (the C++ rounds fp32 results; a float64 -> bf16 cast could round twice differently); fp16 overflow
    gives inf. The identity without a compute precision."""
    if _COMPUTE is None:
        return x
    y = x.float()
    y = y.to(torch.bfloat16) if _COMPUTE == "bf16" else y.half()
    return y.to(x.dtype)


def linear(mod, x):
    """mod(x) for an nn.Linear. Under a compute precision, the activation GEMM: operand and weight
    rounded, (float64-accumulated) product rounded, then the rounded bias added without rounding."""
    if _COMPUTE is None:
        return mod(x)
    y = rnd(F.linear(rnd(x), rnd(mod.weight)))
    return y if mod.bias is None else y + rnd(mod.bias)


# ----------------------------------------------------------------------------------------------
# model

class RMSNorm(nn.Module):
    def __init__(self, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * rnd(self.weight)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(T, HD, theta, dtype, device=None, pos=None):
    """cos, sin [T, HD] of positions 0..T-1, or [*pos.shape, HD] of the positions `pos`."""
    inv_freq = theta ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD)  # theta^(-2i/HD)
    if pos is None:
        freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # [T, HD/2]
    else:
        freqs = pos.to(torch.float64)[..., None] * inv_freq  # [*pos.shape, HD/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [..., HD]
    return emb.cos().to(dtype=dtype, device=device), emb.sin().to(dtype=dtype, device=device)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, self.NH, self.NKV, self.HD = c["d_model"], c["n_heads"], c["n_kv_heads"], c["head_dim"]
        b = bool(c["qkv_bias"])
        self.q_proj = nn.Linear(C, self.NH * self.HD, bias=b)
        self.k_proj = nn.Linear(C, self.NKV * self.HD, bias=b)
        self.v_proj = nn.Linear(C, self.NKV * self.HD, bias=b)
        self.o_proj = nn.Linear(self.NH * self.HD, C, bias=False)

    def forward(self, x, cos, sin, allowed=None):
        """cos, sin [T, HD] or [B, 1, T, HD]; allowed: [B, 1, T, T] keys each query sees (None: causal)."""
        B, T, _ = x.shape
        q = linear(self.q_proj, x).view(B, T, self.NH, self.HD).transpose(1, 2)   # [B, NH, T, HD]
        k = linear(self.k_proj, x).view(B, T, self.NKV, self.HD).transpose(1, 2)  # [B, NKV, T, HD]
        v = linear(self.v_proj, x).view(B, T, self.NKV, self.HD).transpose(1, 2)
        q = rnd(q * cos + rotate_half(q) * sin)  # post-RoPE q/k/v: stored in the compute dtype
        k = rnd(k * cos + rotate_half(k) * sin)
        v = rnd(v)
        rep = self.NH // self.NKV
        if rep > 1:  # head h -> kv head h // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.HD))
        if allowed is None:
            allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~allowed, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v)  # [B, NH, T, HD]
        # the attention output is stored rounded (in the forward a no-op: o_proj rounds its operand)
        y = rnd(y.transpose(1, 2).reshape(B, T, self.NH * self.HD))
        return linear(self.o_proj, y)


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x) with configurable attribute names (HF names)."""

    def __init__(self, C, I, names=("gate_proj", "up_proj", "down_proj")):
        super().__init__()
        self._names = tuple(names)
        setattr(self, names[0], nn.Linear(C, I, bias=False))
        setattr(self, names[1], nn.Linear(C, I, bias=False))
        setattr(self, names[2], nn.Linear(I, C, bias=False))

    def forward(self, x):
        g, u, d = (getattr(self, n) for n in self._names)
        return linear(d, F.silu(linear(g, x)) * linear(u, x))


MoeStats = namedtuple("MoeStats", "aux z counts")


class SparseMoe(nn.Module):
    def __init__(self, c, qwen):
        super().__init__()
        m = c["moe"]
        C = c["d_model"]
        self.E, self.K, self.normalize = m["n_experts"], m["top_k"], bool(m["normalize_topk"])
        self.scoring = m["router_scoring"]
        assert self.scoring in ("softmax", "sigmoid"), self.scoring
        # top-p: the fp32 value the C++ compares with; slots: k_max under top-p, else top_k
        self.top_p = float(torch.tensor(float(m["router_top_p"]), dtype=torch.float32))
        self.slots = m["router_k_max"] if self.top_p > 0 else self.K
        # the fp32 values the C++ holds
        self.bias = None if m["selection_bias"] is None else [
            float(torch.tensor(float(b), dtype=torch.float32)) for b in m["selection_bias"]]
        self.capacity = (float(m["capacity_factor"]), int(m["min_capacity"]), m["drop_policy"], m["importance"])
        assert self.capacity[2] in ("position", "importance") and self.capacity[3] in ("gate", "margin")
        names = ("gate_proj", "up_proj", "down_proj") if qwen else ("w1", "w3", "w2")
        self.gate = nn.Linear(C, self.E, bias=False)
        self.experts = nn.ModuleList([SwiGLU(C, m["expert_size"], names) for _ in range(self.E)])
        self.has_shared = m["shared_expert_size"] > 0
        if self.has_shared:
            self.shared_expert = SwiGLU(C, m["shared_expert_size"])
            self.shared_expert_gate = nn.Linear(C, 1, bias=False)

    def forward(self, x):  # x [N, C]
        N = x.shape[0]
        # router: fp32 weights, unrounded logits; only its input is read in the compute dtype
        logits = self.gate(x) if _COMPUTE is None else F.linear(rnd(x), self.gate.weight)  # [N, E]
        lp = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        # scores: softmax, or DeepSeek-V3's sigmoid; p: what the aux loss averages (the softmax, or
        # the normalised affinities s / sum_e s)
        if self.scoring == "sigmoid":
            s = torch.sigmoid(lp)
            p = s / s.sum(dim=-1, keepdim=True)
        else:
            s = p = torch.softmax(lp, dim=-1)
        # selection by score + bias (the bias is a constant: no gradient, no effect on the gates)
        key = s.detach() if self.bias is None else s.detach() + torch.tensor(self.bias, dtype=s.dtype)
        self.last_logits = lp.detach()  # for diagnostics (routing margins)
        self.last_keys, self.last_scores = key, s.detach()  # selection keys and scores (routing margins)
        topi = torch.topk(key, self.slots, dim=-1).indices
        # top-p: slot j is kept while the probs of the slots before it (selection order) add up to
        # less than top_p: the shortest prefix reaching top_p, at least one slot (a constant mask)
        cum = p.detach().gather(-1, topi).cumsum(dim=-1)
        self.last_cum = cum
        routed = torch.ones_like(topi, dtype=torch.bool)
        if self.top_p > 0:
            routed[:, 1:] = cum[:, :-1] < self.top_p
        self.last_k = routed.sum(dim=-1)
        topv = s.gather(-1, topi) * routed.to(s.dtype)
        gates = topv / topv.sum(dim=-1, keepdim=True) if self.normalize else topv
        gates = gates.to(x.dtype)
        # capacity: of the routed slots, those within their expert's capacity (gates stay as routed)
        keep = routed & self.capacity_keep(topi, routed, p.detach())
        self.last_kept = torch.where(keep, topi, torch.full_like(topi, -1))
        out = torch.zeros_like(x)
        # HF Mixtral style: per expert, gather its tokens, run the FFN, scatter-add the gated output
        for e in range(self.E):
            tok, slot = torch.where((topi == e) & keep)
            if tok.numel() == 0:
                continue
            y = self.experts[e](x.index_select(0, tok)) * gates[tok, slot].unsqueeze(-1)
            out.index_add_(0, tok, y)
        if self.has_shared:
            out = out + torch.sigmoid(linear(self.shared_expert_gate, x)) * self.shared_expert(x)
        out = rnd(out)  # the layer output: stored in the compute dtype
        counts = torch.bincount(topi[routed], minlength=self.E)  # routed slots per expert, before capacity
        P = p.mean(dim=0)
        aux = self.E * ((counts.to(p.dtype) / N).detach() * P).sum()
        z = torch.logsumexp(lp, dim=-1).pow(2).mean()
        return out, MoeStats(aux, z, counts)

    def capacity_keep(self, topi, routed, p):
        """Which assignments an expert keeps under model.moe.router.capacity_factor (written from the
        rule's words in moe/capacity.h, not from its code): per expert, its first `cap` slots in
        (token, slot) order, or its `cap` most important ones, ties in that order. Records
        last_cap_gap: the smallest importance gap between an expert's last kept and first dropped
        assignment (how far float32 rounding is from changing the kept set)."""
        N, K = topi.shape
        factor, min_cap, policy, importance = self.capacity
        self.last_cap_gap = math.inf
        if factor <= 0:
            return torch.ones_like(topi, dtype=torch.bool)
        cap = max(min_cap, math.ceil(factor * N * K / self.E))
        if importance == "gate":
            imp = p.gather(-1, topi)
        else:
            srt = p.sort(dim=-1, descending=True).values
            nxt = srt[:, K] if K < self.E else torch.zeros_like(srt[:, 0])
            imp = (srt[:, 0] - nxt).unsqueeze(-1).expand(N, K)
        flat, impf = torch.where(routed, topi, -1).reshape(-1).tolist(), imp.reshape(-1).tolist()
        keep = [False] * (N * K)
        for e in range(self.E):
            slots = [s for s in range(N * K) if flat[s] == e]
            if policy == "importance":
                slots.sort(key=lambda s: (-impf[s], s))
                if len(slots) > cap:
                    self.last_cap_gap = min(self.last_cap_gap, impf[slots[cap - 1]] - impf[slots[cap]])
            for s in slots[:cap]:
                keep[s] = True
        return torch.tensor(keep, dtype=torch.bool).view(N, K)


class Block(nn.Module):
    def __init__(self, c, layer):
        super().__init__()
        qwen = qwen_layout(c)
        self.input_layernorm = RMSNorm(c["d_model"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["d_model"], c["rms_norm_eps"])
        self.is_moe = is_moe_layer(c, layer)
        if not self.is_moe:
            self.mlp = SwiGLU(c["d_model"], c["dense_ffn_size"])
        elif qwen:
            self.mlp = SparseMoe(c, qwen=True)
        else:
            self.block_sparse_moe = SparseMoe(c, qwen=False)

    def forward(self, x, cos, sin, allowed=None):
        B, T, C = x.shape
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed)
        hn = self.post_attention_layernorm(h).reshape(B * T, C)
        if not self.is_moe:
            return h + self.mlp(hn).view(B, T, C), None
        moe = self.mlp if hasattr(self, "mlp") else self.block_sparse_moe
        y, st = moe(hn)
        return h + y.view(B, T, C), st


class _Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["d_model"])
        self.layers = nn.ModuleList([Block(c, l) for l in range(c["n_layers"])])
        self.norm = RMSNorm(c["d_model"], c["rms_norm_eps"])


Output = namedtuple("Output", "loss ce aux z logits counts")


class MoeTransformer(nn.Module):
    """state_dict()/named_parameters() names are exactly the HF names of make_param_table."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = c = resolve_config(cfg)
        self.model = _Inner(c)
        if not c["tie_embeddings"]:
            self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
        table = param_table(c)
        mine = OrderedDict((n, tuple(p.shape)) for n, p in self.named_parameters())
        want = OrderedDict((n, tuple(s)) for n, s, _ in table)
        assert mine == want or dict(mine) == dict(want), (
            f"parameter names/shapes differ from make_param_table:\n"
            f"{set(mine.items()) ^ set(want.items())}")
        self.table = table

    def forward(self, tokens, targets=None, precision=None, doc_start=None, loss_weights=None):
        """tokens, targets [B, T] int64. Returns Output(loss, ce, aux_mean, z_mean, logits [B*T, V],
        counts [n_moe_layers, E] int64). loss/ce are None without targets. precision: None, or "bf16" /
        "fp16" to emulate the mixed-precision forward (module docstring). doc_start [B, T] int64: packed
        rows, where each position's document begins in its row (module docstring); None: one sequence
        per row. loss_weights [B, T]: ce = sum(w * ce_i) / sum(w) over positions with a target >= 0
        (targets < 0 count nothing); None: the plain mean."""
        with compute_precision(precision):
            return self._forward(tokens, targets, doc_start, loss_weights)

    def _forward(self, tokens, targets, doc_start=None, loss_weights=None):
        c = self.cfg
        B, T = tokens.shape
        assert T <= c["max_seq_len"]
        x = rnd(self.model.embed_tokens(tokens))  # rows of the rounded embedding
        allowed = None
        if doc_start is None:
            cos, sin = rope_cos_sin(T, c["head_dim"], c["rope_theta"], x.dtype, x.device)
        else:
            t = torch.arange(T, device=tokens.device)
            ds = doc_start.to(tokens.device)
            cos, sin = rope_cos_sin(T, c["head_dim"], c["rope_theta"], x.dtype, x.device,
                                    pos=(t[None, :] - ds)[:, None, :])  # [B, 1, T, HD]
            j = t[None, None, :]  # keys
            allowed = ((j <= t[None, :, None]) & (j >= ds[:, :, None]))[:, None]  # [B, 1, T, T]
        auxes, zs, counts = [], [], []
        for blk in self.model.layers:
            x, st = blk(x, cos, sin, allowed)
            if st is not None:
                auxes.append(st.aux)
                zs.append(st.z)
                counts.append(st.counts)
        x = self.model.norm(x)
        w = self.model.embed_tokens.weight if c["tie_embeddings"] else self.lm_head.weight
        logits = F.linear(x, w) if _COMPUTE is None else rnd(F.linear(rnd(x), rnd(w)))  # the LM head GEMM
        logits = logits.reshape(B * T, -1)
        zero = logits.new_zeros(())
        aux = torch.stack(auxes).mean() if auxes else zero
        z = torch.stack(zs).mean() if zs else zero
        cnt = (torch.stack(counts) if counts else
               torch.zeros(0, c["moe"]["n_experts"], dtype=torch.int64))
        ce = loss = None
        if targets is not None:
            if loss_weights is None:
                ce = F.cross_entropy(logits, targets.reshape(-1))
            else:
                tg = targets.reshape(-1)
                per = F.cross_entropy(logits, tg.clamp(min=0), reduction="none")
                w = loss_weights.reshape(-1).to(per.dtype) * (tg >= 0).to(per.dtype)
                ce = (w * per).sum() / w.sum()
            loss = ce + c["moe"]["aux_loss_coef"] * aux + c["moe"]["z_loss_coef"] * z
        return Output(loss, ce, aux, z, logits, cnt)

    # ---- HF-layout weights
    def hf_state(self) -> "OrderedDict[str, torch.Tensor]":
        params = dict(self.named_parameters())
        return OrderedDict((n, params[n].detach().clone()) for n, _, _ in self.table)

    @torch.no_grad()
    def load_hf_state(self, sd: dict, strict=True):
        params = dict(self.named_parameters())
        if strict:
            missing = set(params) - set(sd)
            extra = set(sd) - set(params)
            assert not missing and not extra, f"missing {sorted(missing)} unexpected {sorted(extra)}"
        for n, v in sd.items():
            p = params[n]
            assert tuple(v.shape) == tuple(p.shape), f"{n}: {tuple(v.shape)} vs {tuple(p.shape)}"
            p.copy_(v.to(p.dtype))

    def hf_grads(self) -> "OrderedDict[str, torch.Tensor]":
        params = dict(self.named_parameters())
        out = OrderedDict()
        for n, _, _ in self.table:
            g = params[n].grad
            out[n] = torch.zeros_like(params[n]) if g is None else g.detach().clone()
        return out


# ----------------------------------------------------------------------------------------------
# initialisation

@torch.no_grad()
def init_weights(model: MoeTransformer, seed: int, std=0.08, router_std=0.5, norm_noise=0.1,
                 bias_std=0.05):
    """Seeded init in float32 (so that the stored F32 weights are the exact values): normal(std) for
    linear/embedding/expert weights, normal(router_std) for routers, 1 + norm_noise*N(0,1) for norms,
    bias_std*N(0,1) for biases. Values are rounded to float32 even when the model is float64."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name, shape, kind in model.table:
        if kind == "norm":
            v = 1.0 + norm_noise * torch.randn(shape, generator=g)
        elif kind == "bias":
            v = bias_std * torch.randn(shape, generator=g)
        elif kind == "router":
            v = router_std * torch.randn(shape, generator=g)
        else:
            v = std * torch.randn(shape, generator=g)
        params[name].copy_(v.float())


# ----------------------------------------------------------------------------------------------
# optimizer (torch.optim.AdamW, two groups) and LR schedule

def decays(kind: str, o: dict) -> bool:
    return {"embedding": o["decay_embeddings"], "norm": o["decay_norms"], "bias": o["decay_biases"],
            "router": o["decay_router"], "linear": True, "expert": True}[kind]


def make_optimizer(model: MoeTransformer, ocfg: dict | None = None):
    o = resolve_optim(ocfg)
    params = dict(model.named_parameters())
    dec = [params[n] for n, _, k in model.table if decays(k, o)]
    nodec = [params[n] for n, _, k in model.table if not decays(k, o)]
    groups = [{"params": dec, "weight_decay": o["weight_decay"]},
              {"params": nodec, "weight_decay": 0.0}]
    groups = [gr for gr in groups if gr["params"]]
    return torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])


def lr_at(step: int, total_steps: int, o: dict) -> float:
    """Linear warmup for step < warmup (lr*(s+1)/warmup), then cosine from lr to min_lr."""
    lr, min_lr, wu = o["lr"], o["min_lr"], o["warmup_steps"]
    if step < wu:
        return lr * (step + 1) / wu
    progress = (step - wu) / max(1, total_steps - wu)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def train_step(model, opt, tokens, targets, step, total_steps, ocfg, doc_start=None, loss_weights=None):
    """One optimizer step. Returns (Output of the forward before the update, lr used, total grad
    L2 norm before clipping). Clipping is torch.nn.utils.clip_grad_norm_: grads are scaled by
    min(1, grad_clip / (norm + 1e-6)). Unused parameters get zero gradients (see below). doc_start:
    packed rows, loss_weights: weighted cross-entropy (MoeTransformer.forward)."""
    o = resolve_optim(ocfg)
    lr = lr_at(step, total_steps, o)
    for gr in opt.param_groups:
        gr["lr"] = lr
    opt.zero_grad(set_to_none=True)
    out = model(tokens, targets, doc_start=doc_start, loss_weights=loss_weights)
    out.loss.backward()
    # a parameter that took no part (an expert that got no tokens) gets a zero gradient, not None:
    # like a flat gradient buffer, every parameter then takes the step (weight decay, moment decay)
    # and all share the same AdamW step count. (torch.optim would otherwise skip it.)
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if o["grad_clip"] > 0:
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"]))
    else:
        gnorm = float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters()
                                              if p.grad is not None])))
    opt.step()
    return out, lr, gnorm


# ----------------------------------------------------------------------------------------------
# safetensors

_ST_DTYPES = {  # name -> (numpy dtype, element size)
    "F64": (np.float64, 8), "F32": (np.float32, 4), "I64": (np.int64, 8), "I32": (np.int32, 4),
    "BF16": (np.uint16, 2), "U8": (np.uint8, 1), "I16": (np.int16, 2), "F16": (np.float16, 2),
}


def bf16_bits(x: torch.Tensor) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16)."""
    return x.detach().to(torch.float32).to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def bf16_from_bits(b: np.ndarray) -> torch.Tensor:
    """bfloat16 bit patterns (uint16) -> exact float32 values."""
    u32 = b.astype(np.uint32) << 16
    return torch.from_numpy(u32.view(np.float32).copy())


def _to_numpy(v, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        if isinstance(v, np.ndarray):
            assert v.dtype == np.uint16
            return np.ascontiguousarray(v)
        return bf16_bits(v)
    npd = _ST_DTYPES[dtype][0]
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(v).astype(npd, copy=False))


def save_safetensors(path: str, tensors, metadata: dict | None = None, dtypes=None):
    """tensors: ordered mapping name -> tensor/array, or name -> (dtype, tensor). dtypes: default
    dtype per name or one string; default from the torch dtype (float64 -> F64, float32 -> F32,
    int32 -> I32, int64 -> I64, bfloat16 -> BF16)."""
    auto = {torch.float64: "F64", torch.float32: "F32", torch.int32: "I32", torch.int64: "I64",
            torch.bfloat16: "BF16"}
    header, blobs, off = OrderedDict(), [], 0
    if metadata:
        header["__metadata__"] = OrderedDict((str(k), str(v)) for k, v in metadata.items())
    for name, v in tensors.items():
        if isinstance(v, tuple):
            dt, v = v
        elif isinstance(dtypes, str):
            dt = dtypes
        elif isinstance(dtypes, dict) and name in dtypes:
            dt = dtypes[name]
        elif isinstance(v, torch.Tensor):
            dt = auto[v.dtype]
        else:
            dt = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
                  np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}[np.asarray(v).dtype]
        shape = list(v.shape)
        a = _to_numpy(v, dt)
        assert list(a.shape) == shape
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        assert len(b) == int(np.prod(shape, dtype=np.int64)) * _ST_DTYPES[dt][1]
        header[name] = OrderedDict(dtype=dt, shape=shape, data_offsets=[off, off + len(b)])
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return off  # data bytes


def load_safetensors(path: str, bf16_as_float=True):
    """-> (OrderedDict name -> torch tensor, metadata dict). BF16 comes back as exact float32 values
    (or as raw uint16 numpy bits with bf16_as_float=False)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = OrderedDict()
    ends = []
    for name, info in header.items():
        dt, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        npd, sz = _ST_DTYPES[dt]
        count = int(np.prod(shape, dtype=np.int64))
        assert e - b == count * sz, f"{name}: bad offsets"
        a = np.frombuffer(raw, dtype=np.dtype(npd).newbyteorder("<"), count=count, offset=base + b)
        a = a.reshape(shape).copy()
        ends.append((b, e))
        if dt == "BF16":
            out[name] = bf16_from_bits(a) if bf16_as_float else a
        else:
            out[name] = torch.from_numpy(a.astype(a.dtype.newbyteorder("=")))
    ends.sort()
    pos = 0
    for b, e in ends:
        assert b == pos, f"{path}: gap/overlap in data offsets"
        pos = e
    assert base + pos == len(raw), f"{path}: file size mismatch"
    return out, dict(meta)


# ----------------------------------------------------------------------------------------------
# HF checkpoint directories

def hf_config(cfg: dict) -> dict:
    """config.json (transformers) for a Switchyard model config."""
    c = resolve_config(cfg)
    m = c["moe"]
    common = OrderedDict(
        hidden_size=c["d_model"], num_hidden_layers=c["n_layers"], num_attention_heads=c["n_heads"],
        num_key_value_heads=c["n_kv_heads"], head_dim=c["head_dim"], vocab_size=c["vocab_size"],
        max_position_embeddings=c["max_seq_len"], rope_theta=float(c["rope_theta"]),
        rms_norm_eps=float(c["rms_norm_eps"]), tie_word_embeddings=bool(c["tie_embeddings"]),
        num_experts_per_tok=m["top_k"], router_aux_loss_coef=float(m["aux_loss_coef"]),
        hidden_act="silu", torch_dtype="float32")
    if qwen_layout(c):
        h = OrderedDict(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe")
        h.update(common)
        h.update(num_experts=m["n_experts"], moe_intermediate_size=m["expert_size"],
                 shared_expert_intermediate_size=m["shared_expert_size"],
                 intermediate_size=c["dense_ffn_size"], norm_topk_prob=bool(m["normalize_topk"]),
                 decoder_sparse_step=1, mlp_only_layers=list(range(c["first_dense_layers"])),
                 use_sliding_window=False, sliding_window=None)
    else:
        if not m["normalize_topk"]:
            raise ValueError("mixtral always renormalises the top-k gates")
        h = OrderedDict(architectures=["MixtralForCausalLM"], model_type="mixtral")
        h.update(common)
        h.update(num_local_experts=m["n_experts"], intermediate_size=m["expert_size"],
                 sliding_window=None)
    return h


def config_from_hf(h: dict, aux_loss_coef=None, z_loss_coef=0.0) -> dict:
    """Switchyard model config dict from an HF config.json dict (mixtral / qwen2_moe)."""
    c = dict(vocab_size=h["vocab_size"], d_model=h["hidden_size"], n_layers=h["num_hidden_layers"],
             n_heads=h["num_attention_heads"], n_kv_heads=h.get("num_key_value_heads", h["num_attention_heads"]),
             head_dim=h.get("head_dim") or 0, max_seq_len=h["max_position_embeddings"],
             rope_theta=h.get("rope_theta", 10000.0), rms_norm_eps=h.get("rms_norm_eps", 1e-6),
             tie_embeddings=h.get("tie_word_embeddings", False))
    moe = dict(top_k=h["num_experts_per_tok"],
               aux_loss_coef=h.get("router_aux_loss_coef", 0.01) if aux_loss_coef is None else aux_loss_coef,
               z_loss_coef=z_loss_coef)
    if h["model_type"] == "qwen2_moe":
        mlp_only = sorted(h.get("mlp_only_layers", []))
        assert mlp_only == list(range(len(mlp_only))) and h.get("decoder_sparse_step", 1) == 1
        c.update(qkv_bias=True, first_dense_layers=len(mlp_only), dense_ffn_size=h["intermediate_size"])
        moe.update(n_experts=h["num_experts"], expert_size=h["moe_intermediate_size"],
                   shared_expert_size=h.get("shared_expert_intermediate_size", 0),
                   normalize_topk=h.get("norm_topk_prob", False))
    elif h["model_type"] == "mixtral":
        moe.update(n_experts=h["num_local_experts"], expert_size=h["intermediate_size"], normalize_topk=True)
    else:
        raise ValueError(f"unsupported model_type {h['model_type']}")
    c["moe"] = moe
    return c


def save_hf_checkpoint(dirpath: str, cfg: dict, state: dict, dtype="F32", shards=1):
    """config.json + model.safetensors, or model-0000i-of-0000n.safetensors + index.json."""
    os.makedirs(dirpath, exist_ok=True)
    h = hf_config(cfg)
    h["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F64": "float64"}[dtype]
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(h, f, indent=2)
        f.write("\n")
    names = list(state.keys())
    meta = {"format": "pt"}
    if shards == 1:
        save_safetensors(os.path.join(dirpath, "model.safetensors"),
                         OrderedDict((n, (dtype, state[n])) for n in names), meta)
        return
    # split by bytes into `shards` contiguous groups (parameter-table order)
    esz = _ST_DTYPES[dtype][1]
    sizes = [state[n].numel() * esz for n in names]
    total = sum(sizes)
    groups, cur, acc = [[] for _ in range(shards)], 0, 0
    for n, s in zip(names, sizes):
        if cur < shards - 1 and acc >= total * (cur + 1) / shards:
            cur += 1
        groups[cur].append(n)
        acc += s
    assert all(groups), "too few tensors for the shard count"
    weight_map = OrderedDict()
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors(os.path.join(dirpath, fn), OrderedDict((n, (dtype, state[n])) for n in g), meta)
        for n in g:
            weight_map[n] = fn
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def load_hf_checkpoint(dirpath: str):
    """-> (config dict (Switchyard), OrderedDict name -> float32 tensor)."""
    with open(os.path.join(dirpath, "config.json")) as f:
        h = json.load(f)
    idx = os.path.join(dirpath, "model.safetensors.index.json")
    state = OrderedDict()
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        for fn in sorted(set(wm.values())):
            t, _ = load_safetensors(os.path.join(dirpath, fn))
            state.update(t)
        assert set(state) == set(wm)
    else:
        state, _ = load_safetensors(os.path.join(dirpath, "model.safetensors"))
    return config_from_hf(h), state
