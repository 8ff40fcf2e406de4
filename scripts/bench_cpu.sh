#!/usr/bin/env bash
# scripts/bench_cpu.sh: Switchyard vs eager PyTorch training the tiny shape on this machine, same run.
# Shape: d_model 256, 4 layers, 8 heads, 4 kv heads, seq 256, 8 experts top-2, expert size 512,
# vocab 256, micro-batch 8, fp32, AdamW, THREADS threads (default 2). Prints a table, the ratio, and
# the fraction of the measured fp32 GEMM peak (`switchyard bench gemm`) the training step reaches.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_env.sh
STEPS=${STEPS:-12}

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

build/switchyard bench gemm --threads "$THREADS" > "$OUT/gemm.jsonl"
# PyTorch twice: with libgomp's default spin-waiting and with OMP_WAIT_POLICY=PASSIVE (faster for
# PyTorch 1.13 here); the ratio is taken against the faster of the two.
OMP_WAIT_POLICY=ACTIVE /usr/bin/python3 scripts/bench_pytorch.py --threads "$THREADS" 2>/dev/null > "$OUT/torch_active.json"
OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 scripts/bench_pytorch.py --threads "$THREADS" 2>/dev/null > "$OUT/torch.json"
build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/run" --set train.steps="$STEPS" \
  --set train.threads="$THREADS" --set train.eval_windows=1 > /dev/null

/usr/bin/python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
peak = [json.loads(l) for l in open(f"{out}/gemm.jsonl")][-1]["peak_gflops"]
torch_passive = json.loads(open(f"{out}/torch.json").read().strip().splitlines()[-1])
torch_active = json.loads(open(f"{out}/torch_active.json").read().strip().splitlines()[-1])
torch = max(torch_passive, torch_active, key=lambda r: r["tokens_per_s"])
steps = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl") if '"tokens_per_s"' in l]
timed = steps[2:]  # the first two steps warm up
sy_tps = statistics.median(s["tokens_per_s"] for s in timed)
sy_ms = statistics.median(s["step_ms"] for s in timed)
# training FLOPs per token = 3 x forward (GEMMs + causal attention), tiny shape
C, L, NH, NKV, T, E, K, I, V = 256, 4, 8, 4, 256, 8, 2, 512, 256
HD = C // NH
fwd = L * 2 * (C * (NH + 2 * NKV) * HD + NH * HD * C + C * E + K * 3 * C * I)
fwd += L * 2 * 2 * NH * HD * (T + 1) / 2 + 2 * C * V
flops_tok = 3 * fwd
def frac(tps): return tps * flops_tok / 1e9 / peak
print(f"{'impl':<12}{'tokens/s':>12}{'step ms':>10}{'GFLOP/s':>10}{'% GEMM peak':>13}")
for name, r in (("pytorch/act", torch_active), ("pytorch/pas", torch_passive)):
    print(f"{name:<12}{r['tokens_per_s']:>12.0f}{r['step_ms']:>10.1f}{r['tokens_per_s']*flops_tok/1e9:>10.1f}{100*frac(r['tokens_per_s']):>12.1f}%")
print(f"{'switchyard':<12}{sy_tps:>12.0f}{sy_ms:>10.1f}{sy_tps*flops_tok/1e9:>10.1f}{100*frac(sy_tps):>12.1f}%")
print(f"ratio switchyard / best pytorch: {sy_tps / torch['tokens_per_s']:.2f}x   "
      f"(measured fp32 GEMM peak {peak:.0f} GFLOP/s, {flops_tok/1e6:.1f} MFLOP per trained token, "
      f"torch {torch.get('torch', '?')}, {torch.get('threads', '?')} threads)")
print(f"pytorch's BLAS: {torch.get('blas', '?')}")
if "not OpenBLAS" in torch.get("blas", ""):
    print("WARNING: the PyTorch peer ran on the reference BLAS; this ratio says nothing (scripts/setup.sh installs libopenblas0)")
PY
