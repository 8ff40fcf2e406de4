#!/usr/bin/env bash
# scripts/gpu_check.sh --cpu-dry-run against the build: every step runs (suites, bench ops --quick,
# the tiny and the shrunk gpu_1b training runs) and the summary has every issue-12 row with a figure.
# Where the build has the CUDA backend, the same from scripts/gpu_bundle.sh's bundle (packed, then
# unpacked by gpu_check.sh), and `ldd` with only the bundle's lib/ on the path finds every library
# inside it, except glibc's and CUDA's.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
# the golden files in a folder of our own: ctest may be writing the build's at the same moment
export SWITCHYARD_GOLDEN_DIR="$TMP/golden"
/usr/bin/python3 "$SRC/tests/golden/make_golden.py" --case all --out "$SWITCHYARD_GOLDEN_DIR" >/dev/null

check() {  # check OUT_DIR LABEL: the six files, every suite passed, every target row measured
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, os, sys
out, label = sys.argv[1:]
files = ["gpu_check.log", "versions.json", "suites.json", "bench_ops.json", "training.json", "summary.json"]
missing = [f for f in files if not os.path.exists(os.path.join(out, f))]
s = json.load(open(os.path.join(out, "summary.json")))
ids = [r["id"] for r in s["targets"]]
want = ["gemm_bf16_8192", "grouped_gemm_vs_dense", "tiny_gpu_vs_cpu", "gpu_1b_mfu", "loss_agreement"]
unmeasured = [r["id"] for r in s["targets"] if not isinstance(r["measured"], (int, float))]
suites = ["backend_conformance", "model_conformance", "golden", "nccl_communicator", "generate_decode"]
bad_suites = [k for k in suites if s["suites"].get(k) != "pass"]
train = json.load(open(os.path.join(out, "training.json")))
short = [k for k, n in (("tiny_dev", 4), ("tiny_cpu", 4), ("gpu_1b", 3)) if train.get(k, {}).get("steps") != n]
problems = {"missing files": missing, "missing rows": [i for i in want if i not in ids], "unmeasured": unmeasured,
            "suites not passed": bad_suites, "runs without their steps": short, "failed": s["failed"]}
problems = {k: v for k, v in problems.items() if v}
if s["mode"] != "cpu-dry-run" or s["exit"] != 0:
    problems["mode/exit"] = [s["mode"], s["exit"]]
print(f"{label}: {'ok' if not problems else 'FAIL ' + json.dumps(problems)}")
sys.exit(1 if problems else 0)
PY
}

BUILD_DIR="$BUILD" bash "$SRC/scripts/gpu_check.sh" --cpu-dry-run "$TMP/out" >"$TMP/dry.log" 2>&1 ||
  { cat "$TMP/dry.log"; echo "FAIL: gpu_check.sh --cpu-dry-run exited non-zero"; exit 1; }
check "$TMP/out" "dry run from the build" || { cat "$TMP/dry.log"; exit 1; }

if [ ! -f "$BUILD/core/cuda/libswitchyard_cuda.a" ]; then
  echo "bundle: skipped (this build has no CUDA backend, so gpu_bundle.sh refuses it)"
  exit 0
fi
# a fast xz level and a low packing threshold: the packed path, in seconds
GPU_BUNDLE_XZ_LEVEL=0 GPU_BUNDLE_PACK_ABOVE_MB=1 BUILD_DIR="$BUILD" bash "$SRC/scripts/gpu_bundle.sh" --no-build \
  "$TMP/bundle" >"$TMP/bundle.log" 2>&1 || { cat "$TMP/bundle.log"; echo "FAIL: gpu_bundle.sh"; exit 1; }
[ -f "$TMP/bundle/payload.tar.xz" ] && [ -f "$TMP/bundle/MANIFEST" ] && [ -f "$TMP/bundle/gpu_check.sh" ] ||
  { ls -la "$TMP/bundle"; echo "FAIL: the bundle lacks payload.tar.xz, MANIFEST or gpu_check.sh"; exit 1; }
# the bundle's own environment only: no scripts/env.sh, no build tree
env -i HOME="$HOME" PATH=/usr/local/bin:/usr/bin:/bin OMP_NUM_THREADS=1 \
  bash "$TMP/bundle/gpu_check.sh" --cpu-dry-run "$TMP/out_bundle" >"$TMP/bundle_dry.log" 2>&1 ||
  { cat "$TMP/bundle_dry.log"; echo "FAIL: the bundle's gpu_check.sh --cpu-dry-run exited non-zero"; exit 1; }
check "$TMP/out_bundle" "dry run from the bundle" || { cat "$TMP/bundle_dry.log"; exit 1; }
grep -q '"source": "bundle' "$TMP/out_bundle/summary.json" || { echo "FAIL: the bundle run used the build"; exit 1; }

# Every library the bundled binaries and MPI components load resolves inside the bundle, except
# glibc's and CUDA's (the GPU machine's own).
U="$TMP/unpacked"
mkdir -p "$U" && tar -C "$U" -xJf "$TMP/bundle/payload.tar.xz"
[ -x "$U/bin/switchyard" ] && [ -f "$U/lib/openmpi/mca_ess_singleton.so" ] ||
  { echo "FAIL: the payload lacks bin/switchyard or lib/openmpi/"; exit 1; }
outside=$(for f in "$U"/bin/* "$U"/lib/openmpi/*.so; do
            LD_LIBRARY_PATH="$U/lib" ldd "$f"; done | awk '$2 == "=>" { print $1, $3 }' | sort -u |
          grep -v " $U/lib/" |
          grep -Ev '^(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^ ]*|libcudart|libcublas|libcublasLt|libnccl)\.so' || true)
if [ -n "$outside" ]; then
  echo "FAIL: libraries found outside the bundle:"; echo "$outside"; exit 1
fi
echo "bundle: every library inside it but glibc's and CUDA's ($(du -h "$TMP/bundle/payload.tar.xz" | cut -f1) packed with xz -0)"
