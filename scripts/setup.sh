#!/usr/bin/env bash
# scripts/setup.sh: installs the Debian packages Switchyard needs (only the missing ones) and
# configures + builds it in build/. Idempotent; called by demo.sh, test.sh and bench scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

# ocl-icd-opencl-dev: oneDNN's CMake package calls find_package(OpenCL REQUIRED), and Debian lists it
# only as a recommendation of libdnnl-dev. libopenblas0: without it Debian's PyTorch (the golden
# reference and the benchmark peer) runs on the reference BLAS, 20-30x slower. qemu-user: the
# cpu_isa test runs the binary on an emulated CPU below x86-64-v3. procps: pgrep, for the
# fault-injection tests. libcpp-httplib-dev: the Prometheus /metrics endpoint; prometheus (server and
# promtool): its test and the alert rules' tests; python3-matplotlib: scripts/plot.py.
PACKAGES=(build-essential cmake pkg-config libdnnl-dev ocl-icd-opencl-dev libyaml-cpp-dev libfmt-dev
          libhdf5-dev libopenmpi-dev openmpi-bin nlohmann-json3-dev libcli11-dev libgtest-dev
          python3-torch python3-numpy python3-venv libopenblas0 qemu-user procps
          libcpp-httplib-dev prometheus python3-matplotlib)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A venv beside Debian's PyTorch with transformers from PyPI: the export test loads exports through
# AutoModelForCausalLM with it. Pinned to the last release that supports PyTorch 1.13 and already
# has Mixtral and Qwen2-MoE; gguf (llama.cpp's reader) for the GGUF export check; tensorboard (its
# event-file reader) for the TensorBoard check. Optional: without it those checks say "skipped".
VENV_PACKAGES=("transformers==4.40.2" "gguf==0.17.1" "tensorboard==2.18.0")
if [ -z "${SWITCHYARD_NO_VENV:-}" ] &&
   ! .venv/bin/python -c "import transformers, gguf, tensorboard" >/dev/null 2>&1; then
  if { [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv >/dev/null 2>&1; } &&
     .venv/bin/pip install -q "${VENV_PACKAGES[@]}" >/dev/null 2>&1; then
    echo "setup: .venv with ${VENV_PACKAGES[*]} (for the export and TensorBoard checks)"
  else
    rm -rf .venv
    echo "setup: could not make .venv with ${VENV_PACKAGES[*]}; the export and TensorBoard checks through them will be skipped"
  fi
fi

# Optional (SWITCHYARD_WITH_LLAMA_CPP=1): llama.cpp itself, through the llama-cpp-python bindings
# (PyPI's source package vendors llama.cpp; compiling it takes ~12 minutes on 2 cores, so the
# default setup and CI leave it out). With it, tests/scripts/export_gguf.sh also runs the GGUF
# exports in llama.cpp and compares their logits with the PyTorch reference.
if [ -n "${SWITCHYARD_WITH_LLAMA_CPP:-}" ] && [ -x .venv/bin/python ] &&
   ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python 0.3.36 into .venv (about 12 minutes on 2 cores)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/pip install -q "llama-cpp-python==0.3.36" >/dev/null 2>&1 ||
    echo "setup: could not build llama-cpp-python; the llama.cpp checks will be skipped"
fi

BUILD_DIR=${BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${SWITCHYARD_CMAKE_ARGS:-} >/dev/null
fi
echo "setup: building in $BUILD_DIR (log: $BUILD_DIR/build.log)"
if ! cmake --build "$BUILD_DIR" -j"$(nproc)" > "$BUILD_DIR/build.log" 2>&1; then
  grep -E -m 20 "error|Error" "$BUILD_DIR/build.log" >&2 || tail -n 30 "$BUILD_DIR/build.log" >&2
  echo "setup: the build failed; the full log is $BUILD_DIR/build.log" >&2
  exit 1
fi
if [ -f "$BUILD_DIR/core/cuda/libswitchyard_cuda.a" ]; then
  echo "setup: CUDA backend built (its tests skip without a GPU)"
else
  echo "setup: CPU backend only (no CUDA toolkit found; SWITCHYARD_CUDA=AUTO builds the CUDA backend where nvcc exists)"
fi
