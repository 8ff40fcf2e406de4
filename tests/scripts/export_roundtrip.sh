#!/usr/bin/env bash
# `switchyard export` (launch/export.h) for a mixtral-layout and a qwen2_moe-layout model (shared
# expert, zero q/k/v biases added): train 3 steps with a checkpoint at the end, export fp32, bf16
# and fp16 with small --max-shard-size (several shards), then
# (a) tests/golden/check_export.py loads each export into the PyTorch reference and its logits and
#     mean loss over 12 windows of an llm.c shard equal `switchyard eval --init-from <export>`'s
#     (--dump-logits) within 1e-5 relative; with transformers installed, the same through
#     AutoModelForCausalLM (else it says "transformers not installed: skipped");
# (b) round trip: the fp32 export equals the trainer's final fp32 weights bit for bit, and
#     re-exporting an export (read with the --init-from loader) gives the same tensors bit for bit
#     (fp32 and bf16); the bf16 / fp16 tensors are the round-to-nearest-even of the fp32 ones;
# (c) bad arguments are one-line usage errors naming the folder or value.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/export.sh"
# the reference check runs in the project's venv when scripts/setup.sh made one (Debian's PyTorch
# plus transformers from PyPI), else with Debian's python (transformers checks are then skipped)
PYREF=/usr/bin/python3
[ -x "$SRC/.venv/bin/python" ] && PYREF="$SRC/.venv/bin/python"
export OMP_NUM_THREADS=2
T=32; W=12
# an llm.c shard (v1, uint16 tokens) of the training text, for eval and the reference
write_val_shard

check_model() {  # name max-shard-size [train overrides...]
  local name=$1 shard=$2; shift 2
  local run="$TMP/$name"
  "$SY" train "${SMALL_MODEL[@]}" --set train.steps=3 --set checkpoint.interval=3 --run-dir "$run" "$@" \
    >"$run.train.log" 2>&1 || { cat "$run.train.log"; exit 1; }
  "$SY" export --checkpoint "$run" --out "$run/exp32" --dtype fp32 --max-shard-size "$shard"
  "$SY" export --checkpoint "$run/checkpoints/step-000003" --out "$run/exp16" --dtype bf16 --max-shard-size "$shard"
  "$SY" export --checkpoint "$run/checkpoints" --out "$run/exph" --dtype fp16 --max-shard-size 2000000
  # round trip through the --init-from loader (an export is a model folder)
  "$SY" export --checkpoint "$run/exp32" --out "$run/exp32_again" --dtype fp32 --max-shard-size "$shard"
  "$SY" export --checkpoint "$run/exp16" --out "$run/exp16_again" --dtype bf16
  for e in exp32 exp16; do
    local loss
    loss=$("$SY" eval --init-from "$run/$e" --data "$TMP/val.bin" --seq-len $T --max-windows $W --batch 4 \
             --dump-logits "$run/$e.logits" | /usr/bin/python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["loss"]))')
    "$PYREF" "$SRC/tests/golden/check_export.py" --model "$run/$e" --tokens "$TMP/val.bin" --seq-len $T \
      --windows $W --switchyard-logits "$run/$e.logits" --switchyard-loss "$loss" --tol 1e-5 --transformers
  done
  /usr/bin/python3 - "$run" "$SRC/tests/golden" <<'PY'
import json, os, sys
import numpy as np
run = sys.argv[1]; sys.path.insert(0, sys.argv[2])
import torch_moe
def tensors(d):  # name -> raw numpy array (BF16 as uint16 bits)
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    out = {}
    for f in files:
        t, _ = torch_moe.load_safetensors(os.path.join(d, f), bf16_as_float=False)
        out.update({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in t.items()})
    return out
def same_bits(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)
def rne_bf16(x):
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
failed = 0
def check(what, ok):
    global failed
    failed += not ok
    print(f"{os.path.basename(run)}: {what:60s} {'ok' if ok else 'FAIL'}")
e32, e16, eh = tensors(f"{run}/exp32"), tensors(f"{run}/exp16"), tensors(f"{run}/exph")
idx = json.load(open(f"{run}/exp32/model.safetensors.index.json"))
shards = sorted(set(idx["weight_map"].values()))
check(f"fp32 export: {len(shards)} shards named model-0000i-of-0000n", len(shards) > 2 and shards ==
      [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
check("bf16 export: several shards", len(set(json.load(open(f"{run}/exp16/model.safetensors.index.json"))
                                            ["weight_map"].values())) > 1)
check("index total_size = data bytes", idx["metadata"]["total_size"] == sum(v.nbytes for v in e32.values()))
check("fp32 export == trainer's final weights (bit for bit)", same_bits(e32, tensors(f"{run}/model")))
check("fp32 re-export via --init-from loader (bit for bit)", same_bits(e32, tensors(f"{run}/exp32_again")))
check("bf16 re-export via --init-from loader (bit for bit)", same_bits(e16, tensors(f"{run}/exp16_again")))
check("bf16 tensors = round-to-nearest-even of fp32",
      e16.keys() == e32.keys() and all(np.array_equal(e16[k], rne_bf16(e32[k])) for k in e32))
check("fp16 tensors = round-to-nearest-even of fp32",
      eh.keys() == e32.keys() and all(eh[k].dtype == np.float16 and np.array_equal(eh[k], e32[k].astype(np.float16))
                                      for k in e32))
c32, c16 = (json.load(open(f"{run}/{e}/config.json")) for e in ("exp32", "exp16"))
check("config.json torch_dtype float32 / bfloat16",
      c32["torch_dtype"] == "float32" and c16["torch_dtype"] == "bfloat16" and
      json.load(open(f"{run}/exph/config.json"))["torch_dtype"] == "float16")
check("config.json unchanged by the round trip", c32 == json.load(open(f"{run}/exp32_again/config.json")))
print(f"{os.path.basename(run)}: model_type {c32['model_type']} {c32['architectures']}")
sys.exit(1 if failed else 0)
PY
}

check_model mixtral 1MB
grep -q '"model_type": "mixtral"' "$TMP/mixtral/exp32/config.json"
check_model qwen 100KB --set model.moe.shared_expert_size=32 --set model.moe.n_experts=4 --set model.moe.expert_size=32
grep -q '"model_type": "qwen2_moe"' "$TMP/qwen/exp32/config.json"

# (c) usage errors: exit 2, one line naming the problem
expect_usage "$TMP/nowhere" -- "$SY" export --checkpoint "$TMP/nowhere" --out "$TMP/x"
expect_usage "5XB" -- "$SY" export --checkpoint "$TMP/mixtral" --out "$TMP/x" --max-shard-size 5XB
mkdir -p "$TMP/notmodel" && touch "$TMP/notmodel/keep"
expect_usage "$TMP/notmodel" -- "$SY" export --checkpoint "$TMP/mixtral" --out "$TMP/notmodel"
test -f "$TMP/notmodel/keep"
echo "export_roundtrip: all checks passed"
