#!/usr/bin/env bash
# `switchyard export --quantize int8` (launch/export_int8.h): a small model trained a few steps
# (mixtral layout, and qwen2_moe layout with a shared expert and a dense first layer), exported in
# fp32 and with --quantize int8, then
# (a) the printed report: eval loss before equals `switchyard eval` of the fp32 export, loss after
#     equals `switchyard eval --init-from` the int8 export, and the relative change is < 2%;
# (b) the I8 tensors equal an independent numpy quantization of the fp32 export bit for bit, the
#     `_scale` tensors within 1e-7 relative; norms, embeddings, routers stay in --dtype (fp32 here,
#     bit for bit); config.json has the quantization_config;
# (c) --init-from the int8 export (re-exported in fp32 through the loader) gives q * scale;
# (d) --quantize int8 without --eval-data, or with a missing file, is a one-line usage error.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/export.sh"
export OMP_NUM_THREADS=2
T=32; W=8
write_val_shard

check_model() {  # name [train overrides...]
  local name=$1; shift
  local run="$TMP/$name"
  "$SY" train "${SMALL_MODEL[@]}" --set train.steps=4 --set checkpoint.interval=4 --run-dir "$run" "$@" \
    >"$run.train.log" 2>&1 || { cat "$run.train.log"; exit 1; }
  "$SY" export --checkpoint "$run" --out "$run/exp32" --dtype fp32 >/dev/null
  "$SY" export --checkpoint "$run" --out "$run/exp8" --dtype fp32 --quantize int8 --max-shard-size 50KB \
    --eval-data "$TMP/val.bin" --eval-windows $W --eval-seq-len $T >"$run/report.txt"
  cat "$run/report.txt"
  "$SY" export --checkpoint "$run/exp8" --out "$run/exp8_deq" --dtype fp32 >/dev/null
  local before after
  before=$("$SY" eval --init-from "$run/exp32" --data "$TMP/val.bin" --seq-len $T --max-windows $W --batch 4)
  after=$("$SY" eval --init-from "$run/exp8" --data "$TMP/val.bin" --seq-len $T --max-windows $W --batch 4)
  /usr/bin/python3 - "$run" "$SRC/tests/golden" "$before" "$after" <<'PY'
import json, os, sys
import numpy as np
run = sys.argv[1]
before, after = json.loads(sys.argv[3])["loss"], json.loads(sys.argv[4])["loss"]
def tensors(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    out = {}
    for f in files:  # a plain safetensors reader (F32, I8): u64 header size, JSON, data
        raw = open(os.path.join(d, f), "rb").read()
        n = int.from_bytes(raw[:8], "little")
        for k, v in json.loads(raw[8:8 + n]).items():
            if k == "__metadata__": continue
            b, e = v["data_offsets"]
            dt = {"F32": "<f4", "I8": "i1"}[v["dtype"]]
            out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=dt).reshape(v["shape"])
    return out
failed = 0
def check(what, ok):
    global failed
    failed += not ok
    print(f"{os.path.basename(run)}: {what:66s} {'ok' if ok else 'FAIL'}")
rep = [json.loads(l) for l in open(f"{run}/report.txt") if "loss_before" in l]
check("one report line with loss_before, loss_after, relative_change", len(rep) == 1)
rep = rep[0]
print(f"{os.path.basename(run)}: loss {rep['loss_before']:.6f} -> {rep['loss_after']:.6f} "
      f"({100 * rep['relative_change']:+.4f}%)")
check("report loss_before == eval of the fp32 export", abs(rep["loss_before"] - before) <= 1e-6 * before)
check("report loss_after == eval --init-from the int8 export", abs(rep["loss_after"] - after) <= 1e-6 * after)
check("relative change = (after - before) / before",
      abs(rep["relative_change"] - (rep["loss_after"] - rep["loss_before"]) / rep["loss_before"]) < 1e-12)
check("|relative change| < 2%", abs(rep["relative_change"]) < 0.02)
e32, e8, deq = tensors(f"{run}/exp32"), tensors(f"{run}/exp8"), tensors(f"{run}/exp8_deq")
def linear(k):  # independent of the C++ rule: the names the brief lists
    return (k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                        "gate_proj.weight", "up_proj.weight", "down_proj.weight",
                        "w1.weight", "w2.weight", "w3.weight")) or k == "lm_head.weight")
qnames = [k for k in e32 if linear(k)]
check(f"{len(qnames)} I8 tensors + _scale, the rest as before",
      len(qnames) > 0 and set(e8) == set(e32) | {k + "_scale" for k in qnames} and
      all(e8[k].dtype == np.int8 for k in qnames) and
      all(e8[k].dtype == np.float32 and np.array_equal(e8[k], e32[k]) for k in e32 if k not in qnames))
ok_q = ok_s = ok_d = True
for k in qnames:
    w = e32[k].astype(np.float32)
    scale = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.where(scale[:, None] > 0, np.clip(np.rint(w / safe[:, None]), -127, 127), 0).astype(np.int8)
    ok_q &= e8[k].shape == w.shape and np.array_equal(e8[k], q)
    ok_s &= np.allclose(e8[k + "_scale"], scale, rtol=1e-7, atol=0)
    ok_d &= np.array_equal(deq[k], e8[k].astype(np.float32) * e8[k + "_scale"][:, None])
check("I8 data == numpy per-channel quantization (bit for bit)", ok_q)
check("_scale == max|W[c,:]| / 127 (1e-7 relative)", ok_s)
check("--init-from the int8 export gives q * scale (bit for bit)", ok_d and set(deq) == set(e32))
check("norms, embeddings, routers unchanged via --init-from",
      all(np.array_equal(deq[k], e32[k]) for k in e32 if k not in qnames))
cfg = json.load(open(f"{run}/exp8/config.json"))
check("config.json quantization_config", cfg.get("quantization_config") ==
      {"quant_method": "switchyard_int8_weight_only", "bits": 8, "group": "per_channel"})
check("several shards", len(set(json.load(open(f"{run}/exp8/model.safetensors.index.json"))["weight_map"].values())) > 1)
sys.exit(1 if failed else 0)
PY
}

check_model mixtral
check_model qwen --set model.moe.shared_expert_size=32 --set model.moe.n_experts=4 --set model.moe.expert_size=32 \
  --set model.first_dense_layers=1 --set model.dense_ffn_size=64

expect_usage "--eval-data" -- "$SY" export --checkpoint "$TMP/mixtral" --out "$TMP/x" --quantize int8
expect_usage "$TMP/nofile.bin" -- "$SY" export --checkpoint "$TMP/mixtral" --out "$TMP/x" --quantize int8 \
  --eval-data "$TMP/nofile.bin"
expect_usage "int4" -- "$SY" export --checkpoint "$TMP/mixtral" --out "$TMP/x" --quantize int4
test ! -e "$TMP/x"
echo "export_int8: all checks passed"
