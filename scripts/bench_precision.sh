#!/usr/bin/env bash
# scripts/bench_precision.sh: mixed precision on the tiny config and the demo corpus.
#   quality:    STEPS (default 600) training steps in fp32, bf16 and fp16 (dynamic loss scaling);
#               final training loss (mean of the last 50 steps) of bf16/fp16 relative to fp32
#               (the issue asks for <= 1.5%), final eval loss, skipped fp16 steps, final loss scale;
#   throughput: median tokens/s of each precision over the steps after warm-up, ratio to fp32;
#   ceiling:    `switchyard bench gemm`: this CPU's fp32 GEMM rate, oneDNN's native bf16 matmul rate
#               and the backend's bf16 path (bf16-rounded operands through the fp32 kernel); and
#               scripts/isa_peak.cpp: one core's fp32 FMA vs bf16 dot-product instruction peak.
# THREADS (default 2), STEPS, PRECISIONS (default "fp32 bf16 fp16").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_env.sh
STEPS=${STEPS:-600}
PRECISIONS=${PRECISIONS:-fp32 bf16 fp16}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

build/switchyard bench gemm --threads "$THREADS" > "$OUT/gemm.jsonl"
echo '{}' > "$OUT/isa.json"
if grep -q avx512_bf16 /proc/cpuinfo && g++ -O2 -mavx512f -mavx512bf16 scripts/isa_peak.cpp -o "$OUT/isa_peak" 2>/dev/null; then
  "$OUT/isa_peak" > "$OUT/isa.json"
fi
for p in $PRECISIONS; do
  echo "training $STEPS steps in $p ..." >&2
  build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/$p" --set train.steps="$STEPS" \
    --set train.precision="$p" --set train.threads="$THREADS" --set train.eval_interval=0 \
    --set train.eval_windows=64 > "$OUT/$p.log"
done

/usr/bin/python3 - "$OUT" $PRECISIONS <<'PY'
import json, statistics, sys
out, precs = sys.argv[1], sys.argv[2:]
rows = {}
for p in precs:
    recs = [json.loads(l) for l in open(f"{out}/{p}/metrics.jsonl")]
    steps = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_loss" in r]
    tail = steps[-50:]
    rows[p] = dict(final=statistics.mean(r["loss"] for r in tail),
                   eval=evals[-1]["eval_loss"] if evals else float("nan"),
                   tps=statistics.median(r["tokens_per_s"] for r in steps[5:]),
                   skipped=steps[-1].get("skipped_steps", 0), scale=steps[-1].get("loss_scale"))
ref = rows.get("fp32")
print(f"{'precision':<10}{'final loss':>12}{'vs fp32':>10}{'eval loss':>11}{'tokens/s':>10}{'vs fp32':>9}{'skipped':>9}{'loss scale':>12}")
for p, r in rows.items():
    rel = (r["final"] - ref["final"]) / ref["final"] if ref else float("nan")
    sp = r["tps"] / ref["tps"] if ref else float("nan")
    scale = "" if r["scale"] is None else f"{r['scale']:g}"
    print(f"{p:<10}{r['final']:>12.4f}{100*rel:>9.2f}%{r['eval']:>11.4f}{r['tps']:>10.0f}{sp:>8.2f}x{r['skipped']:>9}{scale:>12}")
g = [json.loads(l) for l in open(f"{out}/gemm.jsonl")]
peak = g[-1]
native = (f"{peak['peak_bf16_native_gflops']:.0f} GFLOP/s ({peak['peak_bf16_native_gflops']/peak['peak_gflops']:.2f}x fp32)"
          if "peak_bf16_native_gflops" in peak else f"none ({peak['bf16_native']})")
print(f"GEMM ceiling on this CPU (oneDNN ISA {peak['onednn_isa']}): fp32 {peak['peak_gflops']:.0f} GFLOP/s, oneDNN "
      f"native bf16 {native}, emulated bf16 path {max(s['bf16_rounded_gflops'] for s in g[:-1]):.0f} GFLOP/s")
isa = json.load(open(f"{out}/isa.json"))
if isa:
    print(f"instruction peak per core: fp32 FMA {isa['fp32_fma_gflops_per_core']:.0f} GFLOP/s, bf16 dot product "
          f"{isa['bf16_dp_gflops_per_core']:.0f} GFLOP/s "
          f"({isa['bf16_dp_gflops_per_core']/isa['fp32_fma_gflops_per_core']:.2f}x); AMX: "
          f"{'yes' if 'amx_bf16' in open('/proc/cpuinfo').read() else 'not exposed'}")
PY
echo "runs in $OUT" >&2
