#!/usr/bin/env bash
# `switchyard export --format gguf` (launch/export_gguf.h): a small mixtral-layout model trained a
# few steps, exported as HF fp32 and as GGUF fp32 / fp16 / bf16, read back with the `gguf` PyPI
# package (in .venv, from scripts/setup.sh; the test says it was skipped when it is missing):
# GGUF v3, alignment 32, llama.cpp tensor names, shapes (ne innermost first) and types, the
# metadata (llama.* hyperparameters, tokenizer.ggml.* byte vocabulary), and the data: experts
# stacked, q/k un-permuted (llama.cpp's rope permutation undone) equal to the HF export, bit for bit
# in fp32 and the round-to-nearest-even in fp16 / bf16. Also: a qwen2_moe-layout model, --quantize
# with gguf and --out a folder are one-line usage errors.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
export OMP_NUM_THREADS=2
PY="$SRC/.venv/bin/python"
run="$TMP/mixtral"
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 --set checkpoint.interval=2 --run-dir "$run" \
  >"$run.train.log" 2>&1 || { cat "$run.train.log"; exit 1; }
"$SY" export --checkpoint "$run" --out "$run/hf" --dtype fp32 >/dev/null
for dt in fp32 fp16 bf16; do
  "$SY" export --checkpoint "$run" --out "$run/model-$dt.gguf" --format gguf --dtype $dt
done

expect_usage() {  # needle -- command...
  local needle=$1; shift 2
  local rc=0
  "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
  if [ $rc -ne 2 ] || [ "$(grep -c . "$TMP/err")" -ne 1 ] || ! grep -qF -- "$needle" "$TMP/err"; then
    echo "FAIL: want exit 2 and one line with '$needle', got rc=$rc:"; cat "$TMP/err"; exit 1
  fi
}
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=1 --set model.moe.shared_expert_size=32 --run-dir "$TMP/qwen" \
  >"$TMP/qwen.log" 2>&1 || { cat "$TMP/qwen.log"; exit 1; }
expect_usage "Mixtral-layout" -- "$SY" export --checkpoint "$TMP/qwen" --out "$TMP/q.gguf" --format gguf
expect_usage "--quantize" -- "$SY" export --checkpoint "$run" --out "$TMP/q.gguf" --format gguf --quantize int8 \
  --eval-data "$TMP/a.txt"
expect_usage "$run/hf" -- "$SY" export --checkpoint "$run" --out "$run/hf" --format gguf
test ! -e "$TMP/q.gguf"

if [ ! -x "$PY" ] || ! "$PY" -c "import gguf" 2>/dev/null; then
  echo "export_gguf: gguf package not installed (scripts/setup.sh puts it in .venv): read-back checks skipped"
  exit 0
fi
"$PY" - "$run" <<'PYEOF'
import json, os, sys
import numpy as np
from gguf import GGUFReader
run = sys.argv[1]
cfg = json.load(open(f"{run}/hf/config.json"))
(shard,) = set(json.load(open(f"{run}/hf/model.safetensors.index.json"))["weight_map"].values())
raw = open(f"{run}/hf/{shard}", "rb").read()
n = int.from_bytes(raw[:8], "little")
hf = {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4").reshape(v["shape"])
      for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
failed = 0
def check(what, ok):
    global failed
    failed += not ok
    print(f"gguf: {what:70s} {'ok' if ok else 'FAIL'}")
C, L, E, I = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_local_experts"], cfg["intermediate_size"]
NH, NKV, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
D = C // NH
def unpermute(w, heads):  # llama.cpp interleaved rows -> HF rotate-half rows
    return w.reshape(heads, D // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
want = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"],
        "output.weight": hf["lm_head.weight"]}
for l in range(L):
    p, b = f"model.layers.{l}.", f"blk.{l}."
    want[b + "attn_norm.weight"] = hf[p + "input_layernorm.weight"]
    want[b + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
    for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")):
        want[b + f"attn_{g}.weight"] = hf[p + f"self_attn.{h}_proj.weight"]
    want[b + "ffn_gate_inp.weight"] = hf[p + "block_sparse_moe.gate.weight"]
    for g, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
        want[b + f"ffn_{g}_exps.weight"] = np.stack([hf[p + f"block_sparse_moe.experts.{e}.{w}.weight"] for e in range(E)])
def rne_bf16(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
for dt, gtype in (("fp32", 0), ("fp16", 1), ("bf16", 30)):
    r = GGUFReader(f"{run}/model-{dt}.gguf")
    def field(k):
        f = r.fields[k]
        if f.types and f.types[0] == 8 and len(f.types) == 1:
            return bytes(f.parts[f.data[0]]).decode()
        if f.types[0] == 9:
            return [bytes(f.parts[i]).decode() if f.types[1] == 8 else f.parts[i][0].item() for i in f.data]
        return f.parts[f.data[0]][0].item()
    check(f"{dt}: GGUF v3, alignment 32, architecture llama",
          field("GGUF.version") == 3 and field("general.alignment") == 32 and field("general.architecture") == "llama"
          and r.alignment == 32 and all(t.data_offset % 32 == 0 for t in r.tensors))
    meta = {"llama.block_count": L, "llama.context_length": cfg["max_position_embeddings"],
            "llama.embedding_length": C, "llama.feed_forward_length": I, "llama.attention.head_count": NH,
            "llama.attention.head_count_kv": NKV, "llama.expert_count": E,
            "llama.expert_used_count": cfg["num_experts_per_tok"], "llama.rope.dimension_count": D,
            "tokenizer.ggml.eos_token_id": 0}
    got = {k: field(k) for k in meta}
    check(f"{dt}: llama.* hyperparameters", got == meta or print(got, meta))
    check(f"{dt}: rope.freq_base, layer_norm_rms_epsilon (fp32)",
          np.float32(field("llama.rope.freq_base")) == np.float32(cfg["rope_theta"]) and
          np.float32(field("llama.attention.layer_norm_rms_epsilon")) == np.float32(cfg["rms_norm_eps"]))
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]; k = 0
    for bb in range(256):
        if bb not in bs: bs.append(bb); cs.append(256 + k); k += 1
    b2u = dict(zip(bs, map(chr, cs)))
    toks = field("tokenizer.ggml.tokens")
    check(f"{dt}: tokenizer gpt2, {V} tokens = bytes_to_unicode(id)",
          field("tokenizer.ggml.model") == "gpt2" and len(toks) == V and
          all(toks[i] == b2u[i] for i in range(min(V, 256))) and len(field("tokenizer.ggml.token_type")) == V)
    ts = {t.name: t for t in r.tensors}
    check(f"{dt}: {len(want)} tensors with llama.cpp names", set(ts) == set(want) or print(sorted(set(ts) ^ set(want))))
    ok_shape = ok_type = ok_data = True
    for name, w in want.items():
        t = ts[name]
        ok_shape &= [int(x) for x in t.shape] == list(w.shape[::-1])
        f32 = w.ndim == 1 or name.endswith("ffn_gate_inp.weight") or dt == "fp32"
        ok_type &= int(t.tensor_type) == (0 if f32 else gtype)
        a = np.asarray(t.data).reshape(w.shape) if f32 or dt == "fp16" else np.asarray(t.data).view(np.uint16).reshape(w.shape)
        if name.endswith("attn_q.weight"): a = unpermute(a, NH)
        if name.endswith("attn_k.weight"): a = unpermute(a, NKV)
        ref = w if f32 else (w.astype(np.float16) if dt == "fp16" else rne_bf16(w))
        ok_data &= a.dtype == ref.dtype and np.array_equal(a, ref)
    check(f"{dt}: shapes (ne innermost first)", ok_shape)
    check(f"{dt}: types (1-D and ffn_gate_inp F32, the rest {dt})", ok_type)
    check(f"{dt}: data == HF export (q/k un-permuted, experts stacked)", ok_data)
sys.exit(1 if failed else 0)
PYEOF
echo "export_gguf: all checks passed"
