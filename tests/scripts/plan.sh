#!/usr/bin/env bash
# `switchyard plan` and train.activation_checkpointing: auto.
#  - parameter counts against the independent PyTorch reference model built from the same config
#    (total = sum of numel; active per token = total - embedding (untied) - (E - top_k) experts'
#    weights per MoE layer), for a Mixtral-layout and a Qwen2-MoE-layout config;
#  - per-rank share under expert parallelism (--ranks 4, E = 4);
#  - auto: no budget -> none; the budget picks the least recomputation that fits, and the trainer
#    reports and uses the same choice (measured activation_mb within the budget);
#  - a budget below what full checkpointing needs is one error line naming
#    train.activation_memory_mb, exit 2;
#  - under expert parallelism skewed routing grows the expert-row buffers past the plan's balanced
#    estimate: a rank that crosses the budget says so on stderr (once); a balanced run does not.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
"$SY" plan "${SMALL_MODEL[@]}" > "$TMP/mixtral.txt"
"$SY" plan "${SMALL_MODEL[@]}" --set model.qkv_bias=true --set model.first_dense_layers=1 \
  --set model.dense_ffn_size=96 --set model.moe.shared_expert_size=48 --set model.moe.normalize_topk=false \
  > "$TMP/qwen.txt"
"$SY" plan "${SMALL_MODEL[@]}" --set parallel.expert_parallel=4 --ranks 4 > "$TMP/ep4.txt"
"$SY" plan "${SMALL_MODEL[@]}" --set train.activation_checkpointing=auto > "$TMP/auto0.txt"
# the three predictions of the plan
read -r _ SEL FULL < <(/usr/bin/python3 - "$TMP/mixtral.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
get = lambda p: float(re.search(r"checkpointing " + p + r"\s+([\d.]+) MiB", t).group(1))
print(get("none"), get("selective"), get("full"))
PY
)
# a budget (whole MiB) that full fits and selective does not
B_FULL_MB=$(/usr/bin/python3 -c "import math; print(math.ceil($FULL) if math.ceil($FULL) < $SEL else int($FULL) + 1)")
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 --set train.activation_checkpointing=auto \
  --set train.activation_memory_mb="$B_FULL_MB" --run-dir "$TMP/auto_full" > "$TMP/auto_full.log" 2> "$TMP/auto_full.err"
# expert parallel 2 with a budget that only the balanced estimate of `none` fits
B_EP=$(/usr/bin/python3 - <<PY
import math, re, subprocess
t = subprocess.run(["$SY", "plan", *"${SMALL_MODEL[*]}".split(), "--set", "parallel.expert_parallel=2", "--ranks", "2"],
                   capture_output=True, text=True, check=True).stdout
print(math.ceil(float(re.search(r"checkpointing none\s+([\d.]+) MiB", t).group(1))))
PY
)
mpirun -np 2 --bind-to none "$SY" train "${SMALL_MODEL[@]}" --set train.steps=3 --set parallel.expert_parallel=2 \
  --set train.activation_checkpointing=auto --set train.activation_memory_mb="$B_EP" --run-dir "$TMP/auto_ep" \
  > "$TMP/auto_ep.log" 2> "$TMP/auto_ep.err"
set +e
"$SY" plan "${SMALL_MODEL[@]}" --set train.activation_checkpointing=auto --set train.activation_memory_mb=1 \
  --set train.micro_batch=64 > "$TMP/small.out" 2> "$TMP/small.err"
echo $? > "$TMP/small.rc"
set -e

/usr/bin/python3 - "$TMP" "$SRC" "$B_FULL_MB" <<'PY'
import json, re, sys
tmp, src, b_full = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, f"{src}/tests/golden")
import torch_moe as tm
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    passed += ok; failed += not ok
    print(f"{what:55s} {detail} {'ok' if ok else 'FAIL'}")
base = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
            moe=dict(n_experts=8, top_k=2, expert_size=512))
qwen = dict(base, qkv_bias=True, first_dense_layers=1, dense_ffn_size=96,
            moe=dict(base["moe"], shared_expert_size=48, normalize_topk=False))
def counts(cfg):
    m = tm.MoeTransformer(cfg)
    c = m.cfg
    total = sum(p.numel() for p in m.parameters())
    expert = sum(p.numel() for n, p in m.named_parameters() if ".experts.0." in n)  # one expert, all layers
    embed = 0 if c["tie_embeddings"] else m.model.embed_tokens.weight.numel()
    active = total - embed - (c["moe"]["n_experts"] - c["moe"]["top_k"]) * expert
    return total, active, expert
def parsed(path):
    t = open(path).read()
    m = re.search(r"parameters: (\d+) total, (\d+) per rank .*?, (\d+) active per token", t)
    return tuple(map(int, m.groups())), t
for name, cfg in (("mixtral", base), ("qwen", qwen)):
    (total, rank, active), _ = parsed(f"{tmp}/{name}.txt")
    t_total, t_active, _ = counts(cfg)
    check(f"{name}: total parameters = PyTorch reference", total == t_total, f"{total} vs {t_total}")
    check(f"{name}: active per token = reference", active == t_active, f"{active} vs {t_active}")
    check(f"{name}: one rank holds everything", rank == total)
(total, rank, active), t = parsed(f"{tmp}/ep4.txt")
_, _, expert = counts(base)
check("ep4: per-rank share = total - 3/4 of the experts", rank == total - 6 * expert, f"{rank}")
check("ep4: header", "plan for 4 rank(s), expert parallel 4" in t)
a0 = open(f"{tmp}/auto0.txt").read()
check("auto without budget chooses none", re.search(r"checkpointing none .*<- chosen", a0) is not None)
log = open(f"{tmp}/auto_full.log").read()
check("trainer: auto with a small budget runs full", "activation checkpointing full" in log, log.splitlines()[1][:120])
rec = [json.loads(l) for l in open(f"{tmp}/auto_full/metrics.jsonl") if '"loss"' in l][0]
check("trainer: measured activations within the budget", rec["activation_mb"] <= b_full, f"{rec['activation_mb']:.1f} <= {b_full}")
err = open(f"{tmp}/small.err").read().strip().splitlines()
rc = int(open(f"{tmp}/small.rc").read())
check("impossible budget: exit 2, one line", rc == 2 and len(err) == 1, f"rc {rc}, {len(err)} lines")
check("impossible budget names the key", bool(err) and "train.activation_memory_mb = 1: even full activation checkpointing needs" in err[0], err[0][:100] if err else "")
check("balanced run: no budget warning", "warning" not in open(f"{tmp}/auto_full.err").read())
ep_err = open(f"{tmp}/auto_ep.err").read()
ep_first = [json.loads(l) for l in open(f"{tmp}/auto_ep/metrics.jsonl") if '"loss"' in l][0]
over = ep_first["activation_mb"] > ep_first["activation_plan_mb"]
check("EP: skewed routing grew the rows past the plan (rank 0, step 1)", over,
      f"{ep_first['activation_mb']:.1f} vs plan {ep_first['activation_plan_mb']:.1f} MiB")
check("EP: the rank over the budget warns, once", "rank 0 holds" in ep_err and ep_err.count("rank 0 holds") == 1
      and "over train.activation_memory_mb" in ep_err, ep_err.strip()[:90])
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
