#!/usr/bin/env bash
# Any x86-64 CPU: what the CPU lacks is detected at run time, never an "internal error" or a crash.
# Each check runs on this CPU as it is and again with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA /
# DNNL_MAX_CPU_ISA), which is what an AVX2-only CPU (AMD EPYC Zen 3) gives, so every machine
# covers both sides.
#  (a) bf16 training: exit 0, finite losses, and the start-up line names the bf16 GEMM path and
#      why; capped, the path is emulated because oneDNN has no bf16 matmul there. The capped and
#      uncapped emulated runs differ only in the fp32 kernel's summation order: losses within 1e-3.
#  (b) SWITCHYARD_CPU_BF16_GEMM=native where oneDNN has no bf16 matmul: exit 2, one line naming
#      the variable and the CPU's instruction set.
#  (c) `switchyard bench gemm`: exit 0 and a fp32 peak either way; capped, no native bf16 column
#      and the reason in its place.
#  (d) A CPU below the build's x86-64-v3 (qemu-user emulating Westmere, when qemu-x86_64 is
#      installed): exit 2 and one line naming the missing instruction set, before anything runs.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
CAP=(env ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2)
BF16=("${SMALL_MODEL[@]}" --set train.steps=4 --set train.precision=bf16)
fail() { echo "FAIL: $*"; exit 1; }

# (a)
"$SY" train "${BF16[@]}" --run-dir "$TMP/native" >"$TMP/native.log"
SWITCHYARD_CPU_BF16_GEMM=emulated "$SY" train "${BF16[@]}" --run-dir "$TMP/emulated" >"$TMP/emulated.log"
"${CAP[@]}" "$SY" train "${BF16[@]}" --run-dir "$TMP/capped" >"$TMP/capped.log"
grep "bf16 GEMMs" "$TMP/native.log" "$TMP/capped.log"
grep -Eq "\((native|emulated) bf16 GEMMs: .+\)" "$TMP/native.log" || fail "no bf16 GEMM path line"
grep -q "(emulated bf16 GEMMs: oneDNN has no bf16 matmul on this CPU (its instruction set here is avx2" \
  "$TMP/capped.log" || fail "capped: the line does not say emulated and why"
/usr/bin/python3 - "$TMP" <<'PY'
import json, math, sys
tmp = sys.argv[1]
def losses(run):
    return [r["loss"] for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r]
a, b, c = losses("native"), losses("emulated"), losses("capped")
assert len(a) == len(b) == len(c) == 4, (a, b, c)
assert all(math.isfinite(x) for x in a + b + c), (a, b, c)
worst = max(abs(x - y) / abs(y) for x, y in zip(c, b))
print(f"(a) bf16 losses capped {c} vs emulated {b}: worst relative difference {worst:.2e}")
assert worst < 1e-3, worst
PY

# (b)
rc=0
SWITCHYARD_CPU_BF16_GEMM=native "${CAP[@]}" "$SY" train "${BF16[@]}" --run-dir "$TMP/forced" \
  >/dev/null 2>"$TMP/forced.err" || rc=$?
cat "$TMP/forced.err"
[ "$rc" = 2 ] || fail "(b) forced native without a oneDNN bf16 matmul exited $rc, expected 2"
[ "$(wc -l <"$TMP/forced.err")" = 1 ] || fail "(b) more than one error line"
grep -q "SWITCHYARD_CPU_BF16_GEMM=native: oneDNN has no bf16 matmul .*avx2" "$TMP/forced.err" || fail "(b) message"
! grep -qi "internal error" "$TMP/forced.err" || fail "(b) an internal error"

# (c)
"$SY" bench gemm --threads 1 --repeats 1 >"$TMP/bench.json"
"${CAP[@]}" "$SY" bench gemm --threads 1 --repeats 1 >"$TMP/bench_capped.json"
/usr/bin/python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
for name in ("bench", "bench_capped"):
    rows = [json.loads(l) for l in open(f"{tmp}/{name}.json")]
    summary = rows[-1]
    print(f"(c) {name}: {summary}")
    assert summary["peak_gflops"] > 0 and all(r["gflops"] > 0 for r in rows[:-1]), rows
    assert ("peak_bf16_native_gflops" in summary) != ("bf16_native" in summary), summary
capped = json.loads(open(f"{tmp}/bench_capped.json").read().splitlines()[-1])
assert capped["onednn_isa"] == "avx2" and "no bf16 matmul" in capped["bf16_native"], capped
PY

# (d)
if command -v qemu-x86_64 >/dev/null; then
  rc=0
  qemu-x86_64 -cpu Westmere "$SY" --version >/dev/null 2>"$TMP/old.err" || rc=$?
  grep -v "^qemu-x86_64: warning" "$TMP/old.err" >"$TMP/old.line" || true
  cat "$TMP/old.line"
  [ "$rc" = 2 ] || fail "(d) on an emulated Westmere the binary exited $rc, expected 2"
  grep -q "needs an x86-64-v3 CPU and this CPU has no avx" "$TMP/old.line" || fail "(d) message"
  qemu-x86_64 -cpu Haswell "$SY" --version 2>/dev/null | grep -q "^switchyard " || fail "(d) Haswell refused"
  echo "(d) below x86-64-v3: one line, exit 2; Haswell runs"
else
  echo "(d) skipped: qemu-x86_64 (Debian's qemu-user) is not installed"
fi
echo "ok"
