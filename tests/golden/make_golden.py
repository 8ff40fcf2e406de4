#!/usr/bin/python3
"""Golden files for the C++ model from the independent PyTorch reference (tests/golden/torch_moe.py).

  /usr/bin/python3 tests/golden/make_golden.py --case mixtral_k2 --out DIR
  /usr/bin/python3 tests/golden/make_golden.py --case all --out DIR        # DIR/<case>/ for every case

Writes per case:
  DIR/model/config.json, DIR/model/model.safetensors (F32 initial weights, HF names)
  DIR/golden.safetensors:
    tokens I32 [B,T], targets I32 [B,T], doc_start I32 [B,T] (packed cases only: where each position's
    document begins in its row; every batch, trajectory included, is packed so), logits F32 [B*T,V],
    loss/ce/aux/z F32 [1],
    expert_counts I32 [n_moe_layers,E] (the router's choice), kept I32 [n_moe_layers,B*T*K] (each slot's
    expert after the capacity drops, -1: dropped), grad.<param> F32 (every parameter, d loss / d param),
    traj.tokens I32 [S,B,T], traj.targets I32 [S,B,T], traj.loss F32 [S] (total loss of step s, before
    its update), plus traj.ce/traj.aux/traj.z/traj.lr/traj.grad_norm F32 [S] (grad_norm: total L2 norm
    before clipping). traj batch 0 is the golden batch.
    __metadata__: aux_loss_coef, z_loss_coef, lr, min_lr, warmup_steps, steps, weight_decay, beta1,
    beta2, eps, grad_clip, case, batch, seq_len, seed, dead_expert (layer:expert or ""),
    router_scoring, selection_bias, capacity_factor, min_capacity, drop_policy, importance
  DIR/golden_mixed.safetensors: the same golden batch and initial weights through the mixed-precision
    forward (torch_moe.py: precision="bf16" / "fp16" emulates the rounding points of core/precision.h),
    for p in bf16, fp16: "<p>.logits" F32 [B*T,V], "<p>.loss", "<p>.ce", "<p>.aux", "<p>.z" F32 [1],
    "<p>.expert_counts" I32 [n_moe_layers,E]; __metadata__: case, precisions, <p>.margin (smallest
    k-th/(k+1)-th router logit gap of that forward), <p>.gap_fp64 (||logits_p - logits|| / ||logits||).
  mixtral_k2 only: DIR/model_bf16_sharded/ (same config.json; BF16 weights in 2 shards +
    model.safetensors.index.json) and DIR/golden_bf16_logits.safetensors ("tokens" I32 [B,T],
    "targets" I32 [B,T], "logits" F32 [B*T,V], "loss" F32 [1] from the bf16-rounded weights).
Everything is computed in float64 from the exact float32 (or bf16) weights, then stored as F32 (the
mixed-precision forward too, rounded to bf16/fp16 where the C++ rounds).
"""
import argparse
import copy
import itertools
import math
import os
import shutil
import sys
import time
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_moe as tm  # noqa: E402

B, T, STEPS = 2, 16, 10
MIN_CAP_GAP = 1e-4  # smallest allowed importance gap at a capacity boundary (probability units)
MIN_MARGIN = 5e-3  # smallest allowed gap between the k-th and (k+1)-th router logit (any layer, token, step)
COMMON = dict(vocab_size=64, d_model=32, max_seq_len=32, rope_theta=10000.0, rms_norm_eps=1e-5)
OPTIM = dict(lr=3e-3, min_lr=3e-4, warmup_steps=3, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
             grad_clip=1.0)

CASES = OrderedDict(
    mixtral_k2=dict(
        seed=38, dead=(0, 3), router_std=1.5,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=48, aux_loss_coef=0.02, z_loss_coef=0.001))),
    mixtral_k1=dict(
        seed=10, dead=None,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=4,
                   moe=dict(n_experts=4, top_k=1, expert_size=40, aux_loss_coef=0.02, z_loss_coef=0.0))),
    qwen_shared=dict(
        seed=23, dead=None,
        model=dict(COMMON, n_layers=3, n_heads=4, n_kv_heads=2, rope_theta=500000.0, rms_norm_eps=1e-6,
                   qkv_bias=True, first_dense_layers=1, dense_ffn_size=64,
                   moe=dict(n_experts=4, top_k=2, expert_size=32, normalize_topk=False,
                            shared_expert_size=56, aux_loss_coef=0.01, z_loss_coef=0.001))),
    # DeepSeek-V3 routing: sigmoid scores, a selection bias that changes the choice of some tokens
    sigmoid_bias=dict(
        seed=56, dead=None, router_std=1.5,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=40, aux_loss_coef=0.02, z_loss_coef=0.001,
                            router_scoring="sigmoid", selection_bias=[0.05, -0.1, 0.0, 0.08]))),
    # expert capacity (moe/capacity.h): over-full experts drop by position, or by importance
    capacity_position=dict(
        seed=66, dead=None,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=40, aux_loss_coef=0.02, z_loss_coef=0.001,
                            capacity_factor=0.75, min_capacity=4))),
    capacity_gate=dict(
        seed=60, dead=None,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=40, aux_loss_coef=0.02, z_loss_coef=0.001,
                            capacity_factor=0.75, min_capacity=4, drop_policy="importance"))),
    capacity_margin=dict(
        seed=103, dead=None,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=8, top_k=2, expert_size=24, aux_loss_coef=0.02, z_loss_coef=0.001,
                            capacity_factor=1.0, min_capacity=2, drop_policy="importance",
                            importance="margin"))),
    softmax_bias=dict(
        seed=53, dead=None, router_std=1.5,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=40, aux_loss_coef=0.02,
                            z_loss_coef=0.001, selection_bias=[0.05, -0.1, 0.0, 0.08]))),
    # adaptive experts per token: the shortest prefix of the top-4 reaching probability 0.7 (1 to 3
    # experts per token here). min_margin: its margin (top_p_margin) also counts the cut decisions,
    # in probability units, where fp32 and fp64 differ by ~1e-6; 32 tokens x 2 layers x 11 forwards
    # leave no seed with 5e-3 in reach.
    top_p=dict(
        seed=85, dead=None, router_std=1.0, min_margin=2e-3,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=8, top_k=2, expert_size=24, aux_loss_coef=0.02, z_loss_coef=0.001,
                            router_top_p=0.7, router_k_max=4))),
    # packed rows (moe::Batch::doc_start): documents of these lengths in each row, RoPE positions
    # restarting at each and attention block-diagonal causal
    packed=dict(
        seed=49, dead=None, docs=[[5, 7, 4], [9, 1, 6]],
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=40, aux_loss_coef=0.02, z_loss_coef=0.001))),
    # per-position loss weights (moe::Batch::weights: noise weighting) and padding (targets -1):
    # ce = sum(w * ce_i) / sum(w) over the positions with a target
    weighted=dict(
        seed=52, dead=None, loss_weights=True,
        model=dict(COMMON, n_layers=2, n_heads=4, n_kv_heads=2,
                   moe=dict(n_experts=4, top_k=2, expert_size=40, aux_loss_coef=0.02, z_loss_coef=0.001))),
)

# dead-expert construction (mixtral_k2): every embedding row gets +ALPHA*u (u a random unit vector),
# so all router inputs share a large common direction. Then, layer by layer, the mean router input m
# over a probe batch is measured and removed from every router row (routing stays diverse), and the
# dead expert's row gets -BETA*m/|m|: its logit is ~ -BETA*|m| below the others for every token.
ALPHA, BETA = 2.0, 4.0


def router_inputs(model, tokens):
    """Router input (post_attention_layernorm output) [N, C] of every MoE layer, via hooks."""
    got = {}
    hooks = []
    for l, blk in enumerate(model.model.layers):
        if blk.is_moe:
            moe = blk.mlp if hasattr(blk, "mlp") else blk.block_sparse_moe
            hooks.append(moe.gate.register_forward_hook(
                lambda mod, inp, out, l=l: got.__setitem__(l, inp[0].detach().double())))
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    return got


def make_model(case):
    torch.manual_seed(case["seed"])
    model = tm.MoeTransformer(case["model"])
    tm.init_weights(model, seed=case["seed"], std=0.08, router_std=case.get("router_std", 0.5),
                    norm_noise=0.1, bias_std=0.05)
    if case["dead"] is not None:
        dead_layer, dead = case["dead"]
        c = model.cfg
        assert tm.is_moe_layer(c, dead_layer)
        g = torch.Generator().manual_seed(case["seed"] + 1000)
        u = torch.randn(c["d_model"], generator=g, dtype=torch.float64)
        u /= u.norm()
        probe = torch.randint(0, c["vocab_size"], (8, T), generator=g)
        with torch.no_grad():
            emb = model.model.embed_tokens.weight
            emb.copy_((emb.double() + ALPHA * u).float())
            for l, blk in enumerate(model.model.layers):
                if not blk.is_moe:
                    continue
                m = router_inputs(model, probe)[l].mean(dim=0)
                mh = m / m.norm()
                moe = blk.mlp if hasattr(blk, "mlp") else blk.block_sparse_moe
                W = moe.gate.weight.double()
                W = W - torch.outer(W @ mh, mh)
                if l == dead_layer:
                    W[dead] -= BETA * mh
                moe.gate.weight.copy_(W.float())
    return model


def make_batch(gen, V, perm):
    """Learnable random tokens (so the trajectory shows learning): a Markov chain that follows the
    fixed permutation `perm` with probability 3/4 and jumps uniformly otherwise; targets = next token."""
    seq = torch.empty(B, T + 1, dtype=torch.int64)
    seq[:, 0] = torch.randint(0, V, (B,), generator=gen)
    for t in range(T):
        jump = torch.rand(B, generator=gen) < 0.25
        rnd = torch.randint(0, V, (B,), generator=gen)
        seq[:, t + 1] = torch.where(jump, rnd, perm[seq[:, t]])
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def loss_weights_of(case, batches):
    """Weighted cases: weights [B, T] in [0, 2) with some zeros, and the last 3 targets of row 1 set
    to -1 in every batch (padding). None otherwise."""
    if not case.get("loss_weights"):
        return None
    gen = torch.Generator().manual_seed(case["seed"] + 11)
    w = torch.rand(B, T, generator=gen, dtype=torch.float64) * 2
    w[0, ::5] = 0
    w = w.float().double()  # values an fp32 weight holds exactly
    for _, tg in batches:
        tg[1, -3:] = -1
    return w


def doc_start_of(docs):
    """doc_start [B, T] int64 of rows packed with documents of the given lengths (None: unpacked)."""
    if docs is None:
        return None
    assert len(docs) == B and all(sum(row) == T for row in docs), docs
    return torch.tensor([[t0 for t0, n in zip([0] + list(itertools.accumulate(row))[:-1], row)
                          for _ in range(n)] for row in docs], dtype=torch.int64)


def check_packed(name, model, tokens, doc_start, logits):
    """The reference's packed rows give each document's logits alone, and differ from the unpacked
    forward (else the case would test nothing)."""
    with torch.no_grad():
        V = logits.shape[-1]
        packed = logits.view(B, T, V)
        for b in range(B):
            starts = sorted(set(doc_start[b].tolist())) + [T]
            for t0, t1 in zip(starts[:-1], starts[1:]):
                alone = model(tokens[b:b + 1, t0:t1]).logits
                assert torch.allclose(packed[b, t0:t1], alone, rtol=0, atol=1e-10), \
                    f"{name}: document {b}:{t0}"
        unpacked = model(tokens).logits
        assert float((unpacked - logits).abs().max()) > 1e-3, f"{name}: packing changes nothing"


def moe_blocks(model):
    return [b.mlp if hasattr(b, "mlp") else b.block_sparse_moe for b in model.model.layers if b.is_moe]


def cap_gap(model):
    """Smallest importance gap at an over-full expert's capacity boundary in the last forward (inf
    without importance dropping): far above float32 rounding, so the C++ keeps the same set."""
    return min([m.last_cap_gap for m in moe_blocks(model)] + [math.inf])


def topk_margin(model):
    """Smallest gap between the k-th and (k+1)-th router logit (selection key under a bias or sigmoid
    scoring) over the tokens of the last forward. Top-p: top_p_margin."""
    K, E = model.cfg["moe"]["top_k"], model.cfg["moe"]["n_experts"]
    if model.cfg["moe"]["router_top_p"] > 0:
        return top_p_margin(model)
    if K == E:
        return math.inf
    m = math.inf
    for blk in model.model.layers:
        if not blk.is_moe:
            continue
        moe = blk.mlp if hasattr(blk, "mlp") else blk.block_sparse_moe
        if moe.bias is None and moe.scoring == "softmax":
            s = moe.last_logits.sort(dim=-1, descending=True).values
            m = min(m, float((s[:, K - 1] - s[:, K]).min()))
            continue
        # selection keys (score + bias): the gap between the k-th and (k+1)-th key in logit units,
        # gap / (|d key_i / d logits| + |d key_j / d logits|) per token: the smallest max-norm change of
        # the logits that can close it (sigmoid: d s_i = s_i (1 - s_i) dl_i; softmax: |d p_i| <= 2 p_i |dl|)
        keys, order = moe.last_keys.sort(dim=-1, descending=True)
        i, j = order[:, K - 1], order[:, K]
        sc = moe.last_scores
        d = sc * (1 - sc) if moe.scoring == "sigmoid" else 2 * sc
        rows = torch.arange(sc.shape[0])
        m = min(m, float(((keys[:, K - 1] - keys[:, K]) / (d[rows, i] + d[rows, j])).min()))
    return m


def top_p_margin(model):
    """Top-p routing: the smallest of (a) the gaps between adjacent selection keys up to the first
    unkept slot (which experts are kept and in what order their probs add up), in the logit units of
    topk_margin, and (b) the gaps |cumulative prob - top_p| at every cut decision, over the tokens
    of the last forward."""
    m = math.inf
    for blk in model.model.layers:
        if not blk.is_moe:
            continue
        moe = blk.mlp if hasattr(blk, "mlp") else blk.block_sparse_moe
        keys, order = moe.last_keys.sort(dim=-1, descending=True)
        sc = moe.last_scores
        d = sc * (1 - sc) if moe.scoring == "sigmoid" else 2 * sc
        rows = torch.arange(sc.shape[0])
        for j in range(min(moe.slots, moe.E - 1)):
            gap = (keys[:, j] - keys[:, j + 1]) / (d[rows, order[:, j]] + d[rows, order[:, j + 1]])
            live = moe.last_k > j  # slot j kept: its successor's place decides the next step
            if live.any():
                m = min(m, float(gap[live].min()))
        if moe.slots > 1:
            m = min(m, float((moe.last_cum[:, :-1] - moe.top_p).abs().min()))
    return m


def f32(x):
    return x.detach().to(torch.float32).reshape(-1 if x.dim() == 0 else x.shape)


def run_case(name, case, out_dir):
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    model32 = make_model(case)
    init_state = model32.hf_state()  # float32: the exact stored weights
    tm.save_hf_checkpoint(os.path.join(out_dir, "model"), case["model"], init_state, dtype="F32")

    model = copy.deepcopy(model32).double()
    c = model.cfg
    V, E = c["vocab_size"], c["moe"]["n_experts"]
    gen = torch.Generator().manual_seed(case["seed"] + 7)
    perm = torch.randperm(V, generator=gen)
    batches = [make_batch(gen, V, perm) for _ in range(STEPS)]
    weights = loss_weights_of(case, batches)
    tokens, targets = batches[0]
    doc_start = doc_start_of(case.get("docs"))

    # ---- golden forward/backward at the initial weights
    out = model(tokens, targets, doc_start=doc_start, loss_weights=weights)
    out.loss.backward()
    if weights is not None:  # the weights must matter, else the case tests nothing
        with torch.no_grad():
            plain = model(tokens, targets.clamp(min=0), doc_start=doc_start).ce
        assert abs(float(plain) - float(out.ce)) > 1e-3, f"{name}: the weights change nothing"
    if doc_start is not None:
        check_packed(name, model, tokens, doc_start, out.logits.detach())
    margin = topk_margin(model)
    gap = cap_gap(model)
    counts = out.counts
    kept = torch.stack([m.last_kept.reshape(-1) for m in moe_blocks(model)])
    if c["moe"]["capacity_factor"] > 0:  # capacity must drop something, else it is untested
        assert bool((kept < 0).any()), f"{name}: capacity drops nothing"
    if c["moe"]["selection_bias"] is not None:  # the bias must change the routing, else it is untested
        moes = moe_blocks(model)
        saved = [m.bias for m in moes]
        for m in moes:
            m.bias = None
        with torch.no_grad():
            unbiased = model(tokens, targets, doc_start=doc_start).counts
        for m, b in zip(moes, saved):
            m.bias = b
        assert not torch.equal(unbiased, counts), f"{name}: the selection bias changes no expert count"
    dead = ""
    if case["dead"] is not None:
        layer, e = case["dead"]
        moe_idx = sum(1 for l in range(layer) if tm.is_moe_layer(c, l))
        assert int(counts[moe_idx, e]) == 0, f"{name}: expert {e} of layer {layer} got tokens: {counts}"
        dead = f"{layer}:{e}"
    dead_gap = math.inf
    if case["dead"] is not None:  # how far below the k-th logit the dead expert's logit stays
        layer, e = case["dead"]
        blk = model.model.layers[layer]
        lg = (blk.mlp if hasattr(blk, "mlp") else blk.block_sparse_moe).last_logits
        kth = lg.sort(dim=-1, descending=True).values[:, c["moe"]["top_k"] - 1]
        dead_gap = float((kth - lg[:, e]).min())

    g = OrderedDict()
    g["tokens"] = tokens.to(torch.int32)
    g["targets"] = targets.to(torch.int32)
    if doc_start is not None:
        g["doc_start"] = doc_start.to(torch.int32)
    if weights is not None:
        g["loss_weights"] = weights.float()
    g["logits"] = f32(out.logits)
    g["loss"] = f32(out.loss.reshape(1))
    g["ce"] = f32(out.ce.reshape(1))
    g["aux"] = f32(out.aux.reshape(1))
    g["z"] = f32(out.z.reshape(1))
    g["expert_counts"] = counts.to(torch.int32)
    g["kept"] = kept.to(torch.int32)  # [n_moe_layers, B*T*K] each slot's expert after capacity (-1: dropped)
    for n, gr in model.hf_grads().items():
        g["grad." + n] = f32(gr)

    # ---- trajectory: 10 AdamW steps from the same initial weights, one batch per step
    tmodel = copy.deepcopy(model32).double()
    opt = tm.make_optimizer(tmodel, OPTIM)
    traj = {k: [] for k in ("loss", "ce", "aux", "z", "lr", "grad_norm")}
    traj_margin = math.inf
    for s, (tk, tg) in enumerate(batches):
        o, lr, gn = tm.train_step(tmodel, opt, tk, tg, s, STEPS, OPTIM, doc_start=doc_start, loss_weights=weights)
        traj_margin = min(traj_margin, topk_margin(tmodel))
        gap = min(gap, cap_gap(tmodel))
        for k, v in (("loss", o.loss), ("ce", o.ce), ("aux", o.aux), ("z", o.z)):
            traj[k].append(float(v))
        traj["lr"].append(lr)
        traj["grad_norm"].append(gn)
    assert abs(traj["loss"][0] - float(out.loss)) < 1e-12
    # every batch must be routed with a clear top-k logit margin so that fp32 and fp64 route alike
    min_margin = case.get("min_margin", MIN_MARGIN)
    assert min(margin, traj_margin) > min_margin, f"{name}: routing tie risk, margin {min(margin, traj_margin)}"
    assert gap > MIN_CAP_GAP, f"{name}: capacity tie risk, importance gap {gap}"
    g["traj.tokens"] = torch.stack([b[0] for b in batches]).to(torch.int32)
    g["traj.targets"] = torch.stack([b[1] for b in batches]).to(torch.int32)
    for k, v in traj.items():
        g["traj." + k] = torch.tensor(v, dtype=torch.float64).float()

    meta = OrderedDict(
        aux_loss_coef=repr(float(c["moe"]["aux_loss_coef"])), z_loss_coef=repr(float(c["moe"]["z_loss_coef"])),
        lr=repr(OPTIM["lr"]), min_lr=repr(OPTIM["min_lr"]), warmup_steps=str(OPTIM["warmup_steps"]),
        steps=str(STEPS), weight_decay=repr(OPTIM["weight_decay"]), beta1=repr(OPTIM["beta1"]),
        beta2=repr(OPTIM["beta2"]), eps=repr(OPTIM["eps"]), grad_clip=repr(OPTIM["grad_clip"]),
        case=name, batch=str(B), seq_len=str(T), seed=str(case["seed"]), dead_expert=dead,
        router_scoring=c["moe"]["router_scoring"],
        router_top_p=repr(float(c["moe"]["router_top_p"])), router_k_max=str(c["moe"]["router_k_max"]),
        capacity_factor=repr(float(c["moe"]["capacity_factor"])), min_capacity=str(c["moe"]["min_capacity"]),
        drop_policy=c["moe"]["drop_policy"], importance=c["moe"]["importance"],
        selection_bias=",".join(repr(float(torch.tensor(b, dtype=torch.float32))) for b in
                                (c["moe"]["selection_bias"] or [])))
    tm.save_safetensors(os.path.join(out_dir, "golden.safetensors"), g, meta)

    extra = mixed_variant(name, model, tokens, targets, out_dir, out.logits, min_margin, doc_start, weights)
    if name == "mixtral_k2":
        extra += bf16_variant(case, init_state, tokens, targets, out_dir, out.logits)

    dt = time.time() - t0
    run_case.last_margin = min(margin, traj_margin)
    cl = ";".join(",".join(str(int(x)) for x in row) for row in counts)
    dropped = int((kept < 0).sum())
    print(f"{name}: params={sum(p.numel() for p in model.parameters())} loss={float(out.loss):.6f} "
          f"ce={float(out.ce):.6f} aux={float(out.aux):.6f} z={float(out.z):.6f} counts=[{cl}] "
          f"traj {traj['loss'][0]:.4f}->{traj['loss'][-1]:.4f} margin={min(margin, traj_margin):.3g}"
          + (f" dead_gap={dead_gap:.3g}" if dead else "")
          + (f" dropped={dropped} cap_gap={gap:.3g}" if c["moe"]["capacity_factor"] > 0 else "") +
          f"{extra} ({dt:.2f}s)", flush=True)


MIXED = ("bf16", "fp16")


def mixed_variant(name, model, tokens, targets, out_dir, logits_fp64, min_margin=MIN_MARGIN, doc_start=None,
                  weights=None):
    g = OrderedDict()
    meta = OrderedDict(case=name, precisions=",".join(MIXED))
    extra = ""
    for p in MIXED:
        with torch.no_grad():
            o = model(tokens, targets, precision=p, doc_start=doc_start, loss_weights=weights)
        margin = topk_margin(model)
        gap = float((o.logits - logits_fp64).norm() / logits_fp64.norm())
        assert torch.isfinite(o.logits).all(), f"{name} {p}: non-finite logits"
        # the C++ must route alike: a top-k logit gap far above what a one-unit difference of a rounded
        # router input (a rounding-midpoint straddle) can move
        assert margin > min_margin, f"{name} {p}: routing tie risk, margin {margin}"
        assert cap_gap(model) > MIN_CAP_GAP, f"{name} {p}: capacity tie risk, gap {cap_gap(model)}"
        g[f"{p}.logits"] = f32(o.logits)
        for k in ("loss", "ce", "aux", "z"):
            g[f"{p}.{k}"] = f32(getattr(o, k).reshape(1))
        g[f"{p}.expert_counts"] = o.counts.to(torch.int32)
        meta[f"{p}.margin"] = repr(margin)
        meta[f"{p}.gap_fp64"] = repr(gap)
        extra += f" {p}: loss={float(o.loss):.6f} gap={gap:.3g} margin={margin:.3g}"
    tm.save_safetensors(os.path.join(out_dir, "golden_mixed.safetensors"), g, meta)
    return extra


def bf16_variant(case, init_state, tokens, targets, out_dir, logits_f32w):
    d = os.path.join(out_dir, "model_bf16_sharded")
    if os.path.isdir(d):
        shutil.rmtree(d)
    tm.save_hf_checkpoint(d, case["model"], init_state, dtype="BF16", shards=2)
    shutil.copyfile(os.path.join(out_dir, "model", "config.json"), os.path.join(d, "config.json"))
    # read it back: the loader path gives the exact bf16 values as float32
    _, state = tm.load_hf_checkpoint(d)
    for n, v in init_state.items():
        ref = tm.bf16_from_bits(tm.bf16_bits(v))
        assert torch.equal(state[n], ref), n
    m = tm.MoeTransformer(case["model"]).double()
    m.load_hf_state(state)
    with torch.no_grad():
        o = m(tokens, targets)
    tm.save_safetensors(os.path.join(out_dir, "golden_bf16_logits.safetensors"), OrderedDict(
        tokens=tokens.to(torch.int32), targets=targets.to(torch.int32), logits=f32(o.logits),
        loss=f32(o.loss.reshape(1))), {"case": "mixtral_k2_bf16"})
    diff = float((o.logits - logits_f32w).abs().max())
    return f" bf16: loss={float(o.loss):.6f} max|dlogits| vs f32 weights={diff:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, help="case name, comma list, or 'all' (writes OUT/<case>/)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (badly so on a loaded machine)
    torch.manual_seed(0)
    names = list(CASES) if a.case == "all" else a.case.split(",")
    for n in names:
        if n not in CASES:
            ap.error(f"unknown case {n}; cases: {', '.join(CASES)}")
    t0 = time.time()
    for n in names:
        run_case(n, CASES[n], os.path.join(a.out, n) if len(names) > 1 or a.case == "all" else a.out)
    if len(names) > 1:
        print(f"all cases: {time.time() - t0:.2f}s")


if __name__ == "__main__":
    main()
