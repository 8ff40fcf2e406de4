#!/usr/bin/env bash
# `switchyard export --format gguf` (launch/export_gguf.h): a small mixtral-layout model trained a
# few steps, exported as HF fp32 and as GGUF fp32 / fp16 / bf16, read back with the `gguf` PyPI
# package (in .venv, from scripts/setup.sh; the test says it was skipped when it is missing):
# GGUF v3, alignment 32, llama.cpp tensor names, shapes (ne innermost first) and types, the
# metadata (llama.* hyperparameters, tokenizer.ggml.* byte vocabulary), and the data: experts
# stacked, q/k un-permuted (llama.cpp's rope permutation undone) equal to the HF export, bit for bit
# in fp32 and the round-to-nearest-even in fp16 / bf16. A qwen2_moe-layout model (shared expert,
# q/k/v bias, un-normalised top-k) exported as architecture qwen2moe, read back: every tensor name in
# the gguf package's MODEL_TENSORS[QWEN2MOE], qwen2moe.* metadata under gguf.Keys' names, q/k not
# permuted, data == HF export bit for bit in fp32. Also one-line usage errors: qwen2_moe models with
# normalize_topk, first_dense_layers or no shared expert, --quantize with gguf, --out a folder.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/export.sh"
export OMP_NUM_THREADS=2
PY="$SRC/.venv/bin/python"
run="$TMP/mixtral"
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 --set checkpoint.interval=2 --run-dir "$run" \
  >"$run.train.log" 2>&1 || { cat "$run.train.log"; exit 1; }
"$SY" export --checkpoint "$run" --out "$run/hf" --dtype fp32 >/dev/null
for dt in fp32 fp16 bf16; do
  "$SY" export --checkpoint "$run" --out "$run/model-$dt.gguf" --format gguf --dtype $dt
done

train_qwen() {  # run-dir, --set...
  local dir=$1; shift
  "$SY" train "${SMALL_MODEL[@]}" --set train.steps=1 "$@" --run-dir "$dir" >"$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
}
qrun="$TMP/qwen2moe"
train_qwen "$qrun" --set train.steps=2 --set checkpoint.interval=2 --set model.moe.shared_expert_size=32 \
  --set model.qkv_bias=true --set model.moe.normalize_topk=false
"$SY" export --checkpoint "$qrun" --out "$qrun/hf" --dtype fp32 >/dev/null
"$SY" export --checkpoint "$qrun" --out "$qrun/model-fp32.gguf" --format gguf --dtype fp32
train_qwen "$TMP/qwen" --set model.moe.shared_expert_size=32
expect_usage "normalize_topk = true" -- "$SY" export --checkpoint "$TMP/qwen" --out "$TMP/q.gguf" --format gguf
train_qwen "$TMP/qdense" --set model.moe.shared_expert_size=32 --set model.moe.normalize_topk=false \
  --set model.first_dense_layers=1 --set model.dense_ffn_size=64
expect_usage "first_dense_layers = 1" -- "$SY" export --checkpoint "$TMP/qdense" --out "$TMP/q.gguf" --format gguf
train_qwen "$TMP/qnoshared" --set model.qkv_bias=true --set model.moe.normalize_topk=false
expect_usage "shared_expert_size = 0" -- "$SY" export --checkpoint "$TMP/qnoshared" --out "$TMP/q.gguf" --format gguf
expect_usage "--quantize" -- "$SY" export --checkpoint "$run" --out "$TMP/q.gguf" --format gguf --quantize int8 \
  --eval-data "$TMP/a.txt"
expect_usage "$run/hf" -- "$SY" export --checkpoint "$run" --out "$run/hf" --format gguf
test ! -e "$TMP/q.gguf"

if [ ! -x "$PY" ] || ! "$PY" -c "import gguf" 2>/dev/null; then
  echo "export_gguf: gguf package not installed (scripts/setup.sh puts it in .venv): read-back checks skipped"
  exit 0
fi
export PYTHONPATH="$SRC/tests/scripts/lib"  # export_checks.py
"$PY" - "$run" <<'PYEOF'
import sys
import numpy as np
from gguf import GGUFReader
from export_checks import Checks, load_hf_export
run = sys.argv[1]
cfg, hf = load_hf_export(f"{run}/hf")
check = Checks("gguf", 70)
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
check.exit()
PYEOF
"$PY" - "$qrun" <<'PYEOF'
import sys
import numpy as np
import gguf
from gguf import GGUFReader, Keys, MODEL_ARCH
from gguf.constants import MODEL_TENSORS, TENSOR_NAMES, MODEL_ARCH_NAMES
from export_checks import Checks, load_hf_export
run = sys.argv[1]
cfg, hf = load_hf_export(f"{run}/hf")
check = Checks("gguf qwen2moe", 62)
arch = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN2MOE]
C, L, E = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_experts"]
I, S = cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"]
NH, NKV, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
assert cfg["model_type"] == "qwen2_moe" and S > 0 and cfg["norm_topk_prob"] is False
# names from the HF export (Qwen2-MoE names) -> the gguf package's own tensor-name table
T = gguf.MODEL_TENSOR
want = {TENSOR_NAMES[T.TOKEN_EMBD] + ".weight": hf["model.embed_tokens.weight"],
        TENSOR_NAMES[T.OUTPUT_NORM] + ".weight": hf["model.norm.weight"],
        TENSOR_NAMES[T.OUTPUT] + ".weight": hf["lm_head.weight"]}
for l in range(L):
    p = f"model.layers.{l}."
    nm = lambda t, suffix="weight": TENSOR_NAMES[t].format(bid=l) + "." + suffix
    want[nm(T.ATTN_NORM)] = hf[p + "input_layernorm.weight"]
    want[nm(T.FFN_NORM)] = hf[p + "post_attention_layernorm.weight"]
    for t, h in ((T.ATTN_Q, "q"), (T.ATTN_K, "k"), (T.ATTN_V, "v"), (T.ATTN_OUT, "o")):
        want[nm(t)] = hf[p + f"self_attn.{h}_proj.weight"]
        if h != "o": want[nm(t, "bias")] = hf[p + f"self_attn.{h}_proj.bias"]
    want[nm(T.FFN_GATE_INP)] = hf[p + "mlp.gate.weight"]
    for t, w in ((T.FFN_GATE_EXP, "gate"), (T.FFN_UP_EXP, "up"), (T.FFN_DOWN_EXP, "down")):
        want[nm(t)] = np.stack([hf[p + f"mlp.experts.{e}.{w}_proj.weight"] for e in range(E)])
    for t, w in ((T.FFN_GATE_SHEXP, "gate"), (T.FFN_UP_SHEXP, "up"), (T.FFN_DOWN_SHEXP, "down")):
        want[nm(t)] = hf[p + f"mlp.shared_expert.{w}_proj.weight"]
    want[nm(T.FFN_GATE_INP_SHEXP)] = hf[p + "mlp.shared_expert_gate.weight"].reshape(C)
r = GGUFReader(f"{run}/model-fp32.gguf")
def field(k):
    f = r.fields[k]
    if f.types == [8]: return bytes(f.parts[f.data[0]]).decode()
    return f.parts[f.data[0]][0].item()
check("GGUF v3, alignment 32, architecture qwen2moe",
      field("GGUF.version") == 3 and field(Keys.General.ARCHITECTURE) == arch == "qwen2moe"
      and r.alignment == 32 and all(t.data_offset % 32 == 0 for t in r.tensors))
allowed = {TENSOR_NAMES[t].format(bid=l) for t in MODEL_TENSORS[MODEL_ARCH.QWEN2MOE] for l in range(L)}
ts = {t.name: t for t in r.tensors}
check(f"{len(ts)} tensor names all in gguf MODEL_TENSORS[QWEN2MOE]",
      all(k.rsplit(".", 1)[0] in allowed for k in ts) or print(sorted(k for k in ts if k.rsplit(".", 1)[0] not in allowed)))
check(f"{len(want)} tensors == the HF export's, renamed", set(ts) == set(want) or print(sorted(set(ts) ^ set(want))))
K = Keys.LLM
meta = {K.BLOCK_COUNT: L, K.CONTEXT_LENGTH: cfg["max_position_embeddings"], K.EMBEDDING_LENGTH: C,
        K.EXPERT_COUNT: E, K.EXPERT_USED_COUNT: cfg["num_experts_per_tok"], K.EXPERT_FEED_FORWARD_LENGTH: I,
        K.EXPERT_SHARED_FEED_FORWARD_LENGTH: S, K.EXPERT_WEIGHTS_NORM: False,
        Keys.Attention.HEAD_COUNT: NH, Keys.Attention.HEAD_COUNT_KV: NKV, Keys.Rope.DIMENSION_COUNT: C // NH}
got = {k.format(arch=arch): field(k.format(arch=arch)) for k in meta}
meta = {k.format(arch=arch): v for k, v in meta.items()}
check("qwen2moe.* hyperparameters (gguf.Keys names)", got == meta or print(got, meta))
check("rope.freq_base, layer_norm_rms_epsilon (fp32)",
      np.float32(field(Keys.Rope.FREQ_BASE.format(arch=arch))) == np.float32(cfg["rope_theta"]) and
      np.float32(field(Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch))) == np.float32(cfg["rms_norm_eps"]))
ok_shape = ok_type = ok_data = True
for name, w in want.items():
    t = ts[name]
    ok_shape &= [int(x) for x in t.shape] == list(w.shape[::-1])
    ok_type &= int(t.tensor_type) == 0
    a = np.asarray(t.data).reshape(w.shape)
    ok_data &= a.dtype == np.float32 and np.array_equal(a.view(np.uint32), w.view(np.uint32))
check("shapes (ne innermost first; ffn_gate_inp_shexp [C])", ok_shape)
check("types (all F32)", ok_type)
check("data == HF export bit for bit (q/k not permuted: NEOX rope)", ok_data)
check("q/k/v biases nonzero (trained, not zero-filled)", all(np.any(want[f"blk.0.attn_{g}.bias"]) for g in "qkv"))
check.exit()
PYEOF
# llama.cpp itself (llama-cpp-python in .venv: SWITCHYARD_WITH_LLAMA_CPP=1 scripts/setup.sh): the
# GGUF files run in llama.cpp and their logits match the PyTorch reference on the HF export
if "$PY" -c "import llama_cpp" 2>/dev/null; then
  for pair in "$run/model-fp32.gguf:$run/hf" "$run/model-fp16.gguf:$run/hf" "$qrun/model-fp32.gguf:$qrun/hf"; do
    "$PY" "$SRC/tests/golden/check_llamacpp.py" --gguf "${pair%%:*}" --model "${pair#*:}" --tol 1e-3
  done
else
  echo "export_gguf: llama_cpp not installed (SWITCHYARD_WITH_LLAMA_CPP=1 scripts/setup.sh): llama.cpp checks skipped"
fi
echo "export_gguf: all checks passed"
