#!/usr/bin/env bash
# `switchyard generate` (launch/generate.h) on small trained byte-level models, a Mixtral-layout MoE,
# one with a dense layer first, a Qwen2-MoE layout (q/k/v biases, a shared expert) and one whose
# max_seq_len the generation passes (the window slides): greedy output (--temperature 0) from the checkpoint and from the
# Hugging Face folder equals the PyTorch reference's greedy argmax loop over the same weights
# (tests/golden/torch_moe.py); a seeded sampled run repeats itself; a model whose vocabulary is not
# the 256 bytes, and bad options, are one-line usage errors (exit 2).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
PROMPT="line 12: the quick"
N=40

check_model() {  # name [train overrides...]
  local name=$1; shift
  local run="$TMP/$name"
  "$SY" train "${SMALL_MODEL[@]}" --set train.steps=30 --set checkpoint.interval=30 --run-dir "$run" "$@" \
    >"$run.train.log" 2>&1 || { cat "$run.train.log"; exit 1; }
  "$SY" generate --checkpoint "$run" --prompt "$PROMPT" --max-new-tokens $N --temperature 0 \
    >"$run.ckpt.txt" 2>"$run.ckpt.err"
  "$SY" generate --init-from "$run/model" --prompt "$PROMPT" --max-new-tokens $N --temperature 0 \
    >"$run.hf.txt" 2>"$run.hf.err"
  grep -q "tokens/s" "$run.ckpt.err" || { echo "FAIL $name: no tokens/s line"; cat "$run.ckpt.err"; exit 1; }
  cmp "$run.ckpt.txt" "$run.hf.txt" || { echo "FAIL $name: checkpoint and HF folder differ"; exit 1; }
  /usr/bin/python3 - "$run/model" "$SRC/tests/golden" "$PROMPT" $N "$run.ckpt.txt" <<'PY'
import sys
import torch
model_dir, golden, prompt, n, out = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, golden)
import torch_moe
cfg, state = torch_moe.load_hf_checkpoint(model_dir)
m = torch_moe.MoeTransformer(cfg)
m.load_hf_state(state)
m.eval()
ctx, new, margin = [0] + list(prompt), [], float("inf")
T = m.cfg["max_seq_len"]
with torch.no_grad():
    for _ in range(n):
        logits = m(torch.tensor([ctx[-T:]], dtype=torch.int64)).logits[-1]
        top2 = torch.topk(logits, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        if nxt == 0:
            break
        new.append(nxt)
        ctx.append(nxt)
want = prompt + bytes(new) + b"\n"
got = open(out, "rb").read()
if got != want:
    print(f"FAIL greedy: switchyard {got!r}\n          torch      {want!r}\n(smallest top-2 logit margin {margin:.3g})")
    sys.exit(1)
print(f"greedy equals torch: {len(new)} new tokens, smallest top-2 margin {margin:.3g}: {got.decode(errors='replace')!r}")
PY
}

check_model moe
check_model dense_first --set model.first_dense_layers=1 --set model.dense_ffn_size=96
check_model qwen --set model.qkv_bias=true --set model.moe.shared_expert_size=32 --set model.moe.normalize_topk=false
# max_seq_len 32 < 1 + prompt + N: past the window the context is its last 32 tokens
check_model window --set model.max_seq_len=32

# sampling: the same seed repeats, another seed gives other text (40 draws at temperature 1)
run="$TMP/moe"
"$SY" generate --checkpoint "$run" --prompt "$PROMPT" --max-new-tokens $N --seed 3 --top-p 0.9 >"$TMP/s1" 2>/dev/null
"$SY" generate --checkpoint "$run" --prompt "$PROMPT" --max-new-tokens $N --seed 3 --top-p 0.9 >"$TMP/s2" 2>/dev/null
"$SY" generate --checkpoint "$run" --prompt "$PROMPT" --max-new-tokens $N --seed 4 --top-p 0.9 >"$TMP/s3" 2>/dev/null
cmp "$TMP/s1" "$TMP/s2" || { echo "FAIL: seeded sampling does not repeat"; exit 1; }
if cmp -s "$TMP/s1" "$TMP/s3"; then echo "FAIL: seeds 3 and 4 sample the same text"; exit 1; fi

# usage errors: exit 2, one stderr line naming the problem
expect_usage() {  # needle command...
  local needle=$1; shift
  local rc=0
  "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
  if [ $rc -ne 2 ] || [ "$(grep -c . "$TMP/err")" -ne 1 ] || ! grep -qF -- "$needle" "$TMP/err"; then
    echo "FAIL: rc=$rc (want 2), want one line with '$needle' from: $*"; cat "$TMP/err"; exit 1
  fi
}
expect_usage "--prompt" "$SY" generate --checkpoint "$run" --prompt ""
expect_usage "--max-new-tokens" "$SY" generate --checkpoint "$run" --prompt a --max-new-tokens 0
expect_usage "--temperature" "$SY" generate --checkpoint "$run" --prompt a --temperature -1
expect_usage "--top-p" "$SY" generate --checkpoint "$run" --prompt a --top-p 1.5
expect_usage "--top-p" "$SY" generate --checkpoint "$run" --prompt a --top-p 0
expect_usage "exactly one" "$SY" generate --checkpoint "$run" --init-from "$run/model" --prompt a
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=1 --set model.vocab_size=300 --run-dir "$TMP/v300" >/dev/null 2>&1
expect_usage "vocab_size 300" "$SY" generate --checkpoint "$TMP/v300" --prompt a
echo "generate: greedy equals torch (MoE, dense-first, Qwen2 layout, sliding window), seeded sampling repeats, usage errors ok"
