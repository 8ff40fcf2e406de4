# scripts/bench_env.sh: what every benchmark script does first (sourced from the repository root):
# build, this machine's environment (scripts/env.sh), THREADS threads per process (default 2,
# through OMP_NUM_THREADS) and the demo corpus in place.
bash scripts/setup.sh
source scripts/env.sh
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS
source scripts/corpus.sh
ensure_corpus >/dev/null
