#!/usr/bin/env bash
# scripts/bench_generate.sh: `switchyard generate` (KV-cached decoding, launch/generate.h) against
# Hugging Face transformers' generate() with its KV cache (use_cache, greedy) on the same weights:
# the tiny config trained STEPS steps (default 150) on the demo corpus, exported as a Mixtral folder,
# N new tokens (default 200, inside max_seq_len so neither side slides its window) after a prompt,
# THREADS threads each (default 2), best of REPEATS (default 3). Prints a table, the tokens/s ratio,
# and whether the two greedy texts are the same (they should be: the same weights, argmax each step).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_env.sh
STEPS=${STEPS:-150}
N=${N:-200}
REPEATS=${REPEATS:-3}
PROMPT=${PROMPT:-"The old man looked at the sea and"}

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/run" --set train.steps="$STEPS" \
  --set train.threads="$THREADS" --set train.eval_windows=1 > "$OUT/train.log"
for r in $(seq "$REPEATS"); do
  build/switchyard generate --init-from "$OUT/run/model" --prompt "$PROMPT" --max-new-tokens "$N" \
    --temperature 0 --threads "$THREADS" > "$OUT/sy.txt" 2> "$OUT/sy.$r.err"
done

PY=/usr/bin/python3
[ -x .venv/bin/python ] && .venv/bin/python -c "import transformers" 2>/dev/null && PY=.venv/bin/python
OMP_WAIT_POLICY=PASSIVE "$PY" - "$OUT" "$PROMPT" "$N" "$REPEATS" "$THREADS" <<'PY'
import glob, re, sys, time
out, prompt, n, repeats, threads = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sy_tps = []
for f in sorted(glob.glob(f"{out}/sy.*.err")):
    m = re.search(r"([0-9.]+) tokens/s", open(f).read())
    sy_tps.append(float(m[1]))
sy_text = open(f"{out}/sy.txt", "rb").read().rstrip(b"\n")
try:
    import torch
    from transformers import AutoModelForCausalLM
except ImportError as e:
    print(f"skipped the transformers peer: {e} (scripts/setup.sh makes .venv with transformers)")
    print(f"switchyard generate: best {max(sy_tps):.1f} tokens/s")
    sys.exit(0)
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(f"{out}/run/model", torch_dtype=torch.float32).eval()
ids = torch.tensor([[0] + list(prompt)], dtype=torch.int64)
best, new = 0.0, None
with torch.no_grad():
    for _ in range(repeats):
        t0 = time.perf_counter()
        o = model.generate(ids, max_new_tokens=n, do_sample=False, use_cache=True, eos_token_id=0, pad_token_id=0)
        dt = time.perf_counter() - t0
        new = o[0, ids.shape[1]:].tolist()
        best = max(best, len(new) / dt)
if new and new[-1] == 0:
    new = new[:-1]
hf_text = prompt + bytes(new)
sy_best = max(sy_tps)
print(f"{'decoder':<34}{'tokens/s':>10}")
print(f"{'transformers ' + __import__('transformers').__version__ + ' generate (KV cache)':<34}{best:>10.1f}")
print(f"{'switchyard generate (KV cache)':<34}{sy_best:>10.1f}")
print(f"ratio switchyard / transformers: {sy_best / best:.2f}x  ({n} new tokens after a {len(prompt)}-byte prompt, "
      f"greedy, fp32, {threads} threads, best of {repeats}; torch {torch.__version__})")
same = hf_text == sy_text
print(f"greedy texts equal: {same}")
if not same:
    print(f"  switchyard:   {sy_text[:120]!r}\n  transformers: {hf_text[:120]!r}")
    sys.exit(1)
print(f"text: {sy_text.decode(errors='replace')[:200]!r}")
PY
