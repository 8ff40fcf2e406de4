#!/usr/bin/env bash
# scripts/gpu_bundle.sh [--no-build] [--verify] [DIR]: packs what scripts/gpu_check.sh needs into DIR
# (default gpu-bundle/, git-ignored) so that it runs on a GPU machine that cannot build Switchyard:
# one with the CUDA driver, python3 and the CUDA libraries as pip packages, but none of our Debian
# packages (yaml-cpp, HDF5, oneDNN, OpenMPI, fmt, gtest, CLI11), no apt and no network.
#
#   scripts/gpu_bundle.sh                  # here (builds first if needed), then carry gpu-bundle/
#   bash gpu-bundle/gpu_check.sh OUT_DIR   # there
#
# DIR holds gpu_check.sh, MANIFEST (what is in it, from which commit, the glibc it needs) and, packed
# as DIR/payload.tar.xz because unpacked it is ~85 MiB (libdnnl alone is 40 MB; xz -6 makes the whole
# ~19 MiB, under a lent machine's 64 MiB for everything that travels), these folders, which
# gpu_check.sh unpacks into its temporary work folder on each run (DIR itself never grows):
#   bin/     switchyard and the test binaries gpu_check runs
#   lib/     every shared library they need by `ldd`, except glibc's own (a newer glibc there runs
#            binaries built against ours, never the reverse) and the CUDA libraries (libcudart,
#            libcublas, libcublasLt, libnccl: 0.7 GB, they come from the GPU machine's pip packages
#            or /usr/local/cuda, found by gpu_check.sh)
#   lib/openmpi/  the OpenMPI 4.1 components a singleton MPI_Init (no mpirun, no orted) needs with
#            OMPI_MCA_ess_singleton_isolated=1: 15 of the 121, found by dropping the loaded ones one
#            at a time while every bundled binary still ran without a warning
#   ompi/    OpenMPI's help texts (readable errors), found through OPAL_PREFIX
#   golden/  the PyTorch reference files test_golden reads (SWITCHYARD_GOLDEN_DIR)
#   share/   configs/tiny.yaml and configs/gpu_1b.yaml, and corpus.txt (the repository's own text,
#            turned into a token file there by `switchyard prepare`)
# The bundle is made from the build in $BUILD_DIR (default build/); it must have the CUDA backend.
# --no-build: bundle the build as it is (else the bundled targets are brought up to date first).
# --verify: afterwards, run `gpu_check.sh --cpu-dry-run` from the bundle inside a brand-new Debian 12
# root (scripts/fresh_root.sh's base, python3 added, the CUDA toolkit bind-mounted for its libraries,
# nothing of ours installed): proof that the bundle carries everything but glibc and CUDA. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build}
say() { echo "gpu_bundle: $*"; }
die() { echo "gpu_bundle: error: $*" >&2; exit 2; }

build=1 verify=0 DIR=gpu-bundle
for a in "$@"; do
  case $a in
    --no-build) build=0 ;;
    --verify) verify=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $a (see --help)" ;;
    *) DIR=$a ;;
  esac
done

BINARIES=(switchyard tests/test_backend_conformance tests/test_model_conformance tests/test_golden
          tests/test_nccl_communicator tests/test_generate)
TARGETS=(switchyard test_backend_conformance test_model_conformance test_golden test_nccl_communicator
         test_generate)
# A singleton MPI_Init with ess_singleton_isolated: the components found necessary by removing one at
# a time from those it loads (OpenMPI 4.1.4, Debian 12); shmem_mmap and coll_self are the defaults.
OMPI_COMPONENTS=(allocator_basic allocator_bucket bml_r2 btl_self coll_basic coll_libnbc coll_self
                 errmgr_default_app ess_singleton pmix_isolated pml_ob1 reachable_weighted schizo_orte
                 shmem_mmap state_app)
OMPI_COMPONENT_DIR=/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3
OMPI_HELP_DIR=/usr/share/openmpi
# Left to the GPU machine: glibc's own libraries, and the CUDA libraries (and the driver's).
SKIP_GLIBC='^(linux-vdso|ld-linux[^ ]*|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libnsl|libBrokenLocale|libthread_db|libc_malloc_debug)\.so'
SKIP_CUDA='^(libcuda|libcudart|libcublas|libcublasLt|libnccl|libcudnn[a-z_]*|libnvrtc[a-z-]*|libnvJitLink|libnvidia-[a-z-]*)\.so'

# 1. the build
if ((build)); then
  if [ -f "$BUILD/CMakeCache.txt" ]; then
    say "bringing ${TARGETS[*]} up to date in $BUILD"
    cmake --build "$BUILD" -j"${GPU_BUNDLE_JOBS:-2}" --target "${TARGETS[@]}" >"$BUILD/gpu_bundle_build.log" 2>&1 ||
      { tail -n 30 "$BUILD/gpu_bundle_build.log" >&2; die "the build failed (log: $BUILD/gpu_bundle_build.log)"; }
  else
    BUILD_DIR=$BUILD bash scripts/setup.sh
  fi
fi
for b in "${BINARIES[@]}"; do [ -x "$BUILD/$b" ] || die "$BUILD/$b is missing: build first (bash scripts/setup.sh)"; done
[ -f "$BUILD/core/cuda/libswitchyard_cuda.a" ] ||
  die "$BUILD was built without the CUDA backend (no nvcc found); a GPU machine could not use this bundle"
GOLDEN=${SWITCHYARD_GOLDEN_DIR:-$BUILD/golden}
if [ ! -f "$GOLDEN/mixtral_k2/golden.safetensors" ]; then
  say "making the golden files (PyTorch reference) in $GOLDEN"
  /usr/bin/python3 tests/golden/make_golden.py --case all --out "$GOLDEN" >/dev/null
fi

# 2. the folder
rm -rf "$DIR"
mkdir -p "$DIR"
stage=$(mktemp -d "$(dirname "$DIR")/.gpu_bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,lib/openmpi,ompi/share,share/configs}
for b in "${BINARIES[@]}"; do cp "$BUILD/$b" "$stage/bin/"; done
for c in "${OMPI_COMPONENTS[@]}"; do cp "$OMPI_COMPONENT_DIR/mca_$c.so" "$stage/lib/openmpi/"; done
cp -r "$OMPI_HELP_DIR" "$stage/ompi/share/openmpi"
cp -r "$GOLDEN" "$stage/golden"
cp configs/tiny.yaml configs/gpu_1b.yaml "$stage/share/configs/"
# The corpus: the repository's prose and sources (~1.3 MB of bytes; prepare makes one document of it),
# as gpu_check.sh makes it from a build.
{ cat ./*.md docs/*.md; find core data launch moe optim parallel tests -type f \( -name '*.h' -o -name '*.cpp' \
    -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' \) | sort | xargs cat; } >"$stage/share/corpus.txt"

# Shared libraries: everything `ldd` resolves for the binaries and components, minus glibc and CUDA,
# copied under the name the loader asks for (the soname).
missing=()
while read -r name path; do
  [[ $name =~ $SKIP_GLIBC || $name =~ $SKIP_CUDA ]] && continue
  if [ "$path" = "not" ]; then missing+=("$name"); continue; fi
  [ -f "$stage/lib/$name" ] || cp -L "$path" "$stage/lib/$name"
done < <(for f in "$stage"/bin/* "$stage"/lib/openmpi/*.so; do ldd "$f"; done |
         awk '$2 == "=>" { print $1, ($3 == "not" ? "not" : $3) }' | sort -u)
((${#missing[@]} == 0)) || die "ldd finds no ${missing[*]} on this machine"
# Every bundled library's own needs are among them (ldd lists needs transitively): check it.
while read -r name; do
  [[ $name =~ $SKIP_GLIBC || $name =~ $SKIP_CUDA ]] || [ -f "$stage/lib/$name" ] ||
    die "$name (needed inside the bundle) was not collected"
done < <(for f in "$stage"/lib/*.so*; do objdump -p "$f" | awk '$1 == "NEEDED" { print $2 }'; done | sort -u)

# The newest glibc symbol version anything bundled asks for: the GPU machine needs at least that.
glibc_needed=$(for f in "$stage"/bin/* "$stage"/lib/*.so* "$stage"/lib/openmpi/*.so; do
                 objdump -T "$f" | grep -o 'GLIBC_[0-9][0-9.]*'; done | sed 's/GLIBC_//' | sort -V -u | tail -n 1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
{
  echo "switchyard gpu bundle"
  echo "commit: $commit$dirty"
  echo "made: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "glibc needed: $glibc_needed"
  echo "cuda libraries needed (from the GPU machine): $(for f in "$stage"/bin/*; do ldd "$f"; done |
        awk '{ print $1 }' | grep -E "$SKIP_CUDA" | sort -u | tr '\n' ' ')"
  echo "files:"
  (cd "$stage" && find . -type f | sort | sed 's|^\./|  |')
} >"$DIR/MANIFEST"
cp scripts/gpu_check.sh "$DIR/gpu_check.sh"
unpacked=$(du -sm "$stage" | cut -f1)

# 3. packed when large: a lent machine takes 64 MiB in all, the repository included.
if ((unpacked > ${GPU_BUNDLE_PACK_ABOVE_MB:-50})); then
  say "packing ${unpacked} MiB into $DIR/payload.tar.xz"
  tar -C "$stage" -cf - . | xz -T"${GPU_BUNDLE_JOBS:-2}" -"${GPU_BUNDLE_XZ_LEVEL:-6}" >"$DIR/payload.tar.xz"
else
  cp -r "$stage"/. "$DIR/"
fi
say "$DIR: $(du -sh "$DIR" | cut -f1) ($unpacked MiB unpacked; $(find "$stage/lib" -maxdepth 1 -name '*.so*' | wc -l) libraries," \
    "glibc >= $glibc_needed needed); on the GPU machine: bash $DIR/gpu_check.sh OUT_DIR"

# 4. the proof: the dry run from the bundle in a new Debian 12 root with none of our packages.
((verify)) || exit 0
[ "$(id -u)" -eq 0 ] || die "--verify needs root (chroot, mounts)"
base=${SWITCHYARD_FRESH_BASE:-/var/tmp/switchyard-fresh-base}
[ -f "$base/.switchyard-fresh-base" ] || die "no Debian 12 base root in $base: make it once with: sudo scripts/fresh_root.sh true"
root=${GPU_BUNDLE_VERIFY_ROOT:-/var/tmp/switchyard-gpu-bundle-root}
grep -q " $root/" /proc/mounts && die "something is still mounted under $root; unmount it first"
rm -rf --one-file-system "$root"
cp -a "$base" "$root"
mounts=()
cleanup_root() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -R -l "${mounts[i]}" 2>/dev/null || true; done
  rm -rf "$stage"
}
trap cleanup_root EXIT
for f in /etc/resolv.conf /etc/hosts; do [ -f "$f" ] && cp "$f" "$root$f"; done
for f in /etc/apt/apt.conf.d/*; do [ -f "$f" ] && cp "$f" "$root/etc/apt/apt.conf.d/"; done
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount --rbind /sys "$root/sys" && mounts+=("$root/sys")
mount --rbind /dev "$root/dev" && mounts+=("$root/dev")
if [ -d /usr/local/cuda ]; then  # the toolkit's libraries stand in for the GPU machine's pip packages
  cuda=$(readlink -f /usr/local/cuda)
  mkdir -p "$root$cuda" && mount --bind -o ro "$cuda" "$root$cuda" && mounts+=("$root$cuda")
  [ "$cuda" = /usr/local/cuda ] || ln -sfn "$cuda" "$root/usr/local/cuda"
fi
say "verify: installing python3 (the GPU image has it) in a new Debian 12 root ($root)"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null' ||
  die "could not install python3 in the new root"
ours=$(chroot "$root" bash -c 'ls /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openmpi 2>/dev/null' |
       grep -E '^lib(dnnl|hdf5|yaml-cpp|fmt|mpi|open-pal|open-rte|gomp|gtest|hwloc|event)' || true)
[ -z "$ours" ] || die "the new root already has some of our libraries: $ours"
cp -a "$DIR" "$root/root/bundle"
say "verify: bash /root/bundle/gpu_check.sh --cpu-dry-run in the new root (env -i)"
rc=0
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash /root/bundle/gpu_check.sh --cpu-dry-run /root/gpu-check || rc=$?
cp "$root/root/gpu-check/summary.json" "$DIR/verify-summary.json" 2>/dev/null || true
((rc == 0)) || die "the dry run from the bundle failed in the new root (exit $rc); its output is above"
say "verify: the dry run passed from the bundle in a new Debian 12 root (summary: $DIR/verify-summary.json)"
