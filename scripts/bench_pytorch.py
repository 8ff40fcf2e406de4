#!/usr/bin/python3
"""PyTorch eager fp32 baseline for the Switchyard throughput benchmark ("tiny" shape).

  source scripts/env.sh; OMP_NUM_THREADS=2 /usr/bin/python3 scripts/bench_pytorch.py [--steps 6] [--threads 2]

(scripts/env.sh sets OPENBLAS_CORETYPE only where Debian's OpenBLAS misdetects this CPU.)

Model: the golden reference tests/golden/torch_moe.py (HF-Mixtral-style eager MoE: per-expert
index_select / index_add_), d_model 256, 4 layers, 8 heads / 4 kv heads, seq 256, 8 experts top-2,
expert size 512, vocab 256, micro-batch 8; AdamW (two groups, weight decay 0.1), grad clip 1.0,
aux loss 0.01. Random tokens. The first --warmup steps are not timed.
Prints one JSON line: {"impl":"pytorch","tokens_per_s":..,"step_ms":..,"torch":..,"threads":..,"blas":..}
("blas": the library PyTorch's BLAS calls went to, with OpenBLAS's core type).
(per-step lines go to stderr).

OMP_WAIT_POLICY defaults to PASSIVE here (set it to ACTIVE to override): with libgomp's default
spin-waiting, 2 OpenMP threads plus OpenBLAS's own pthreads on a 2-core machine that is also busy
with other work ran ~5-10x slower (130-290 tokens/s instead of ~1200), measuring the contention
rather than PyTorch.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import (libgomp init)

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import openblas_core  # noqa: E402
import torch_moe as tm  # noqa: E402

TINY = dict(vocab_size=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=256,
            rope_theta=10000.0, rms_norm_eps=1e-5,
            moe=dict(n_experts=8, top_k=2, expert_size=512, aux_loss_coef=0.01, z_loss_coef=0.0))
OPTIM = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
             grad_clip=1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    assert a.steps > a.warmup >= 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    model = tm.MoeTransformer(TINY)  # float32
    tm.init_weights(model, seed=a.seed, std=0.02, router_std=0.02, norm_noise=0.0, bias_std=0.0)
    model.train()
    opt = tm.make_optimizer(model, OPTIM)
    B, T, V = a.micro_batch, a.seq_len, TINY["vocab_size"]
    g = torch.Generator().manual_seed(a.seed + 1)
    times, losses = [], []
    for s in range(a.steps):
        seq = torch.randint(0, V, (B, T + 1), generator=g)
        tok, tgt = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        t0 = time.perf_counter()
        out, _, _ = tm.train_step(model, opt, tok, tgt, s, a.steps, OPTIM)
        loss = float(out.loss)
        dt = time.perf_counter() - t0
        losses.append(loss)
        if s >= a.warmup:
            times.append(dt)
        print(f"step {s}: loss {loss:.4f} {dt * 1e3:.1f} ms{'' if s >= a.warmup else ' (warm-up)'}",
              file=sys.stderr, flush=True)
    total = sum(times)
    print(json.dumps({"impl": "pytorch", "tokens_per_s": round(B * T * len(times) / total, 1),
                      "step_ms": round(1e3 * total / len(times), 2), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "blas": blas_name()}), flush=True)


def blas_name():
    path, core, config = openblas_core.blas_info()
    if core:
        return f"{config}, core {core} ({path})"
    return f"{path} (not OpenBLAS: reference BLAS, 20-30x slower; install libopenblas0)"



if __name__ == "__main__":
    main()
