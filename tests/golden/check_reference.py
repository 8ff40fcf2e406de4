#!/usr/bin/python3
"""Self-check of the PyTorch reference (tests/golden/torch_moe.py). Run: /usr/bin/python3 tests/golden/check_reference.py

  1. forward vs an independent numpy float64 loop implementation (RMSNorm, RoPE as explicit pair
     rotations, GQA by index, causal softmax, routing (top-k and top-p), SwiGLU experts, shared
     expert, dense layers),
     including aux_l = E * sum_e count_e/N * P_e and z_l = mean_t logsumexp^2, and the expert counts
  2. torch.autograd.gradcheck of the total loss w.r.t. every parameter (float64) on tiny models
     (qwen2_moe layout with dense layer / shared expert / qkv bias / unnormalised gates; mixtral layout
     with GQA and renormalised gates; tied embeddings)
  3. the training step (param groups, LR schedule, clip_grad_norm_, torch AdamW) vs a hand-written
     AdamW over a few steps
  4. safetensors / HF checkpoint round trips (F32, BF16 sharded; bf16 rounding = round-to-nearest-even)
"""
import copy
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.nn.utils import stateless

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_moe as tm  # noqa: E402

TINY_QWEN = dict(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=8,
                 rope_theta=500000.0, rms_norm_eps=1e-6, qkv_bias=True, first_dense_layers=1,
                 dense_ffn_size=7,
                 moe=dict(n_experts=3, top_k=2, expert_size=6, normalize_topk=False, shared_expert_size=5,
                          aux_loss_coef=0.05, z_loss_coef=0.01))
TINY_MIXTRAL = dict(vocab_size=9, d_model=8, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=8,
                    rope_theta=10000.0, rms_norm_eps=1e-5,
                    moe=dict(n_experts=4, top_k=2, expert_size=5, aux_loss_coef=0.05, z_loss_coef=0.01))
TINY_TOP_P = dict(TINY_MIXTRAL, moe=dict(TINY_MIXTRAL["moe"], router_top_p=0.5, router_k_max=3))
TINY_TIED_K1 = dict(vocab_size=9, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=8,
                    tie_embeddings=True,
                    moe=dict(n_experts=3, top_k=1, expert_size=4, aux_loss_coef=0.1, z_loss_coef=0.02))


def build(cfg, seed):
    m = tm.MoeTransformer(cfg)
    tm.init_weights(m, seed=seed, std=0.3, router_std=1.0, norm_noise=0.1, bias_std=0.1)
    return m.double()


def batch(cfg, seed, B=2, T=5):
    g = torch.Generator().manual_seed(seed)
    V = tm.resolve_config(cfg)["vocab_size"]
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


# ---------------------------------------------------------------------------------------------
# 1. independent numpy forward

def np_forward(cfg, W, tokens, targets):
    c = tm.resolve_config(cfg)
    m = c["moe"]
    W = {k: v.detach().double().numpy() for k, v in W.items()}
    tokens = tokens.numpy()
    B, T = tokens.shape
    C, NH, NKV, HD = c["d_model"], c["n_heads"], c["n_kv_heads"], c["head_dim"]
    E, K = m["n_experts"], m["top_k"]
    tp = float(np.float32(m["router_top_p"]))  # the fp32 value the C++ compares with
    qwen = tm.qwen_layout(c)
    silu = lambda a: a / (1.0 + np.exp(-a))  # noqa: E731

    def rms(x, w):
        return np.array([x[i] / math.sqrt(np.mean(x[i] ** 2) + c["rms_norm_eps"]) * w for i in range(len(x))])

    def rope(v, t):  # v [HD] at position t: rotate pairs (i, i + HD/2) by t * theta^(-2i/HD)
        out = v.copy()
        h = HD // 2
        for i in range(h):
            a = t * c["rope_theta"] ** (-2.0 * i / HD)
            out[i] = v[i] * math.cos(a) - v[i + h] * math.sin(a)
            out[i + h] = v[i + h] * math.cos(a) + v[i] * math.sin(a)
        return out

    def lin(x, name, bias=None):
        y = x @ W[name].T
        return y + W[bias] if bias else y

    def swiglu(x, g, u, d):
        return lin(silu(lin(x, g)) * lin(x, u), d)

    x = W["model.embed_tokens.weight"][tokens].reshape(B * T, C)
    auxes, zs, counts = [], [], []
    for l in range(c["n_layers"]):
        p = f"model.layers.{l}."
        xn = rms(x, W[p + "input_layernorm.weight"])
        bq = (lambda s: p + f"self_attn.{s}_proj.bias") if c["qkv_bias"] else (lambda s: None)
        q = lin(xn, p + "self_attn.q_proj.weight", bq("q"))
        k = lin(xn, p + "self_attn.k_proj.weight", bq("k"))
        v = lin(xn, p + "self_attn.v_proj.weight", bq("v"))
        att = np.zeros((B * T, NH * HD))
        for b in range(B):
            for h in range(NH):
                kvh = h // (NH // NKV)
                for t in range(T):
                    qt = rope(q[b * T + t, h * HD:(h + 1) * HD], t)
                    s = np.array([qt @ rope(k[b * T + j, kvh * HD:(kvh + 1) * HD], j) / math.sqrt(HD)
                                  for j in range(t + 1)])
                    pr = np.exp(s - s.max())
                    pr /= pr.sum()
                    att[b * T + t, h * HD:(h + 1) * HD] = sum(
                        pr[j] * v[b * T + j, kvh * HD:(kvh + 1) * HD] for j in range(t + 1))
        h_ = x + lin(att, p + "self_attn.o_proj.weight")
        hn = rms(h_, W[p + "post_attention_layernorm.weight"])
        if l < c["first_dense_layers"]:
            x = h_ + swiglu(hn, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight")
            continue
        mp = p + ("mlp." if qwen else "block_sparse_moe.")
        names = ("gate_proj", "up_proj", "down_proj") if qwen else ("w1", "w3", "w2")
        logits = lin(hn, mp + "gate.weight")
        N = B * T
        y = np.zeros((N, C))
        cnt = np.zeros(E, dtype=np.int64)
        probs = np.zeros((N, E))
        lse = np.zeros(N)
        for t in range(N):
            mx = logits[t].max()
            lse[t] = mx + math.log(np.exp(logits[t] - mx).sum())
            pr = np.exp(logits[t] - lse[t])
            probs[t] = pr
            order = sorted(range(E), key=lambda e: (-pr[e], e))[:K if tp == 0 else m["router_k_max"]]
            if tp > 0:  # top-p: the shortest prefix whose probabilities reach tp
                cum = np.cumsum([pr[e] for e in order])
                order = order[:next((j + 1 for j in range(len(order)) if cum[j] >= tp), len(order))]
            gsum = sum(pr[e] for e in order)
            for e in order:
                cnt[e] += 1
                gate = pr[e] / gsum if m["normalize_topk"] else pr[e]
                y[t] += gate * swiglu(hn[t:t + 1], *(f"{mp}experts.{e}.{n}.weight" for n in names))[0]
            if m["shared_expert_size"] > 0:
                sg = 1.0 / (1.0 + math.exp(-float(hn[t] @ W[mp + "shared_expert_gate.weight"][0])))
                y[t] += sg * swiglu(hn[t:t + 1], *(mp + f"shared_expert.{n}.weight"
                                                   for n in ("gate_proj", "up_proj", "down_proj")))[0]
        auxes.append(E * sum(cnt[e] / N * probs[:, e].mean() for e in range(E)))
        zs.append(np.mean(lse ** 2))
        counts.append(cnt)
        x = h_ + y
    x = rms(x, W["model.norm.weight"])
    lm = W["model.embed_tokens.weight"] if c["tie_embeddings"] else W["lm_head.weight"]
    logits = x @ lm.T
    tg = targets.numpy().reshape(-1)
    ce = np.mean([-(logits[i, tg[i]] - logits[i].max() - math.log(np.exp(logits[i] - logits[i].max()).sum()))
                  for i in range(len(tg))])
    aux, z = (np.mean(auxes), np.mean(zs)) if auxes else (0.0, 0.0)
    loss = ce + m["aux_loss_coef"] * aux + m["z_loss_coef"] * z
    return dict(loss=loss, ce=ce, aux=aux, z=z, logits=logits, counts=np.array(counts))


def check_forward():
    for name, cfg in (("qwen", TINY_QWEN), ("mixtral", TINY_MIXTRAL), ("tied_k1", TINY_TIED_K1),
                      ("top_p", TINY_TOP_P)):
        m = build(cfg, 5)
        tok, tgt = batch(cfg, 6, B=2, T=6)
        o = m(tok, tgt)
        r = np_forward(cfg, m.hf_state(), tok, tgt)
        for k in ("loss", "ce", "aux", "z"):
            assert abs(float(getattr(o, k)) - r[k]) < 1e-12, (name, k, float(getattr(o, k)), r[k])
        assert np.abs(o.logits.detach().numpy() - r["logits"]).max() < 1e-12, name
        assert np.array_equal(o.counts.numpy(), r["counts"]), (name, o.counts, r["counts"])
        slots = tm.n_moe_layers(m.cfg) * 12
        if m.cfg["moe"]["router_top_p"] > 0:  # some tokens keep fewer than k_max, some more than one
            assert slots < int(o.counts.sum()) < slots * m.cfg["moe"]["router_k_max"], (name, o.counts)
        else:
            assert int(o.counts.sum()) == slots * m.cfg["moe"]["top_k"]
    print("forward vs numpy loops: ok (logits, ce, aux, z, counts; 4 configs)")


# ---------------------------------------------------------------------------------------------
# 2. gradcheck

def directional_check(f, inputs, grads, names, gen, eps=1e-5):
    """Per parameter tensor: central difference along a random direction vs grad . direction."""
    worst = 0.0
    for i, (x, g) in enumerate(zip(inputs, grads)):
        d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        with torch.no_grad():
            xs = list(inputs)
            xs[i] = x + eps * d
            fp = float(f(*xs))
            xs[i] = x - eps * d
            fm = float(f(*xs))
        num = (fp - fm) / (2 * eps)
        ana = float((g * d).sum())
        err = abs(num - ana) / (1e-6 + abs(ana))
        assert abs(num - ana) < 1e-7 + 1e-5 * abs(ana), (names[i], num, ana)
        worst = max(worst, err)
    return worst


def check_grad():
    # full gradcheck (every parameter element) on the smallest model; on the others torch's
    # fast_mode gradcheck plus a finite-difference check per parameter tensor
    for name, cfg, full in (("tied_k1", TINY_TIED_K1, True), ("qwen", TINY_QWEN, False),
                            ("mixtral", TINY_MIXTRAL, False)):
        m = build(cfg, 7)
        tok, tgt = batch(cfg, 8, B=2, T=4)
        names = [n for n, _, _ in m.table]
        params = dict(m.named_parameters())
        inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

        def f(*ps):
            return stateless.functional_call(m, dict(zip(names, ps)), (tok, tgt)).loss

        # the routing must not flip inside the finite-difference step: check its margin
        m(tok, tgt)
        K = m.cfg["moe"]["top_k"]
        for blk in m.model.layers:
            if blk.is_moe:
                mo = blk.mlp if hasattr(blk, "mlp") else blk.block_sparse_moe
                s = mo.last_logits.sort(dim=-1, descending=True).values
                assert float((s[:, K - 1] - s[:, K]).min()) > 1e-4
        n = sum(p.numel() for p in inputs)
        t0 = time.time()
        if full:
            assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
        else:
            torch.manual_seed(1)
            assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
        # the module's own backward (what make_golden dumps) vs the finite differences per tensor
        m.zero_grad(set_to_none=True)
        m(tok, tgt).loss.backward()
        mine = m.hf_grads()
        gs = [mine[nm] for nm in names]
        worst = directional_check(f, inputs, gs, names, torch.Generator().manual_seed(2))
        print(f"gradcheck {name}: ok ({n} parameters, {'full' if full else 'fast_mode'} + "
              f"{len(names)} per-tensor directional checks, worst rel err {worst:.1e}, {time.time() - t0:.1f}s)")


# ---------------------------------------------------------------------------------------------
# 3. optimizer

def check_optimizer():
    cfg = TINY_QWEN
    o = dict(lr=3e-2, min_lr=3e-3, warmup_steps=2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
             grad_clip=0.5)
    S = 5
    m = build(cfg, 9)
    ref = copy.deepcopy(m)
    opt = tm.make_optimizer(m, o)
    kinds = {n: k for n, _, k in m.table}
    decay = {"embedding": True, "linear": True, "expert": True, "norm": False, "bias": False, "router": False}
    assert {k for k in kinds.values()} == set(decay)
    state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in ref.named_parameters()}
    unused = 0  # steps in which some expert got no tokens (its grad must count as zero, not skipped)
    for s in range(S):
        tok, tgt = batch(cfg, 100 + s, B=2, T=5)
        lr = (o["lr"] * (s + 1) / o["warmup_steps"] if s < o["warmup_steps"] else
              o["min_lr"] + 0.5 * (o["lr"] - o["min_lr"]) *
              (1 + math.cos(math.pi * (s - o["warmup_steps"]) / max(1, S - o["warmup_steps"]))))
        out, lr_used, gn = tm.train_step(m, opt, tok, tgt, s, S, o)
        # manual: same forward, global-norm clip, AdamW (decoupled decay, bias-corrected, eps outside sqrt)
        ref.zero_grad(set_to_none=True)
        lref = ref(tok, tgt).loss
        lref.backward()
        assert abs(float(out.loss) - float(lref)) < 1e-12, (s, float(out.loss), float(lref))
        assert abs(lr_used - lr) < 1e-15 + 1e-12 * lr, (s, lr_used, lr)
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in ref.named_parameters()}
        unused += int((out.counts == 0).any())
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
        assert abs(norm - gn) < 1e-10
        scale = min(1.0, o["grad_clip"] / (norm + 1e-6))
        with torch.no_grad():
            for n, p in ref.named_parameters():
                g = grads[n] * scale
                mo, v = state[n]
                mo.mul_(o["beta1"]).add_((1 - o["beta1"]) * g)
                v.mul_(o["beta2"]).add_((1 - o["beta2"]) * g * g)
                mh = mo / (1 - o["beta1"] ** (s + 1))
                vh = v / (1 - o["beta2"] ** (s + 1))
                wd = o["weight_decay"] if decay[kinds[n]] else 0.0
                p.mul_(1 - lr * wd)
                p.sub_(lr * mh / (vh.sqrt() + o["eps"]))
    mp = dict(m.named_parameters())
    err = max(float((mp[n] - p).abs().max()) for n, p in ref.named_parameters())
    assert err < 1e-12, err
    assert unused > 0, "the check should include a step with an unused expert"
    print(f"AdamW/schedule/clip vs manual: ok ({S} steps, max |dparam| {err:.1e}, {unused} steps with an unused expert)")


# ---------------------------------------------------------------------------------------------
# 4. I/O

def check_io():
    with tempfile.TemporaryDirectory() as d:
        # bf16 rounding: torch's cast equals manual round-to-nearest-even on the bits
        x = torch.randn(10000, dtype=torch.float32) * 3
        x[:4] = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -1.0 - 2 ** -8, 0.0])  # exact ties
        bits = x.numpy().view(np.uint32).astype(np.uint64)
        manual = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        assert np.array_equal(tm.bf16_bits(x), manual)
        # safetensors round trip, all dtypes
        t = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5).float(),
             "c": torch.arange(6, dtype=torch.int32).reshape(2, 3), "d": ("BF16", x[:7]),
             "e": torch.zeros(0, 3)}
        p = os.path.join(d, "x.safetensors")
        tm.save_safetensors(p, t, {"k": "v"})
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        assert n % 8 == 0
        back, meta = tm.load_safetensors(p)
        assert meta == {"k": "v"} and list(back) == list(t)
        for k in ("a", "b", "c", "e"):
            assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k]), k
        assert torch.equal(back["d"], tm.bf16_from_bits(tm.bf16_bits(x[:7])))
        # HF checkpoints: F32 single file, BF16 sharded
        for cfg in (TINY_QWEN, TINY_MIXTRAL):
            m = tm.MoeTransformer(cfg)
            tm.init_weights(m, seed=3)
            st = m.hf_state()
            tm.save_hf_checkpoint(os.path.join(d, "f32"), cfg, st)
            c2, st2 = tm.load_hf_checkpoint(os.path.join(d, "f32"))
            assert tm.resolve_config(c2) == tm.resolve_config(
                dict(cfg, moe=dict(cfg["moe"], aux_loss_coef=c2["moe"]["aux_loss_coef"], z_loss_coef=0.0)))
            assert all(torch.equal(st[k], st2[k]) for k in st) and list(st2) == list(st)
            tm.save_hf_checkpoint(os.path.join(d, "bf16"), cfg, st, dtype="BF16", shards=2)
            _, st3 = tm.load_hf_checkpoint(os.path.join(d, "bf16"))
            assert set(st3) == set(st)
            assert all(torch.equal(st3[k], tm.bf16_from_bits(tm.bf16_bits(st[k]))) for k in st)
            m2 = tm.MoeTransformer(c2)
            m2.load_hf_state(st3)
    print("safetensors / HF checkpoint / bf16 rounding: ok")


def main():
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (badly so on a loaded machine)
    t0 = time.time()
    check_forward()
    check_grad()
    check_optimizer()
    check_io()
    print(f"check_reference: all ok ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
