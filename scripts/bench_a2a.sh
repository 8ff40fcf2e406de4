#!/usr/bin/env bash
# scripts/bench_a2a.sh: the MoE token exchange on 4 MPI ranks, flat vs hierarchical vs auto vs raw
# MPI_Alltoallv, at the message sizes of a real MoE step: TOKENS tokens per rank (default 2048) of
# d_model 256 and 1024 fp32, top-2 over 8 experts (2 per rank), random routing.
#   1. 4 ranks as 2 simulated nodes x 2 (SWITCHYARD ranks_per_node=2): inter-node messages per rank
#      go from the remote ranks (2) to the remote nodes (1), inter-node bytes fall by the duplicate
#      factor (tokens with both experts on the same remote node cross once);
#   2. 4 ranks as one node (ranks_per_node=4): what hierarchical costs where it saves nothing.
# Every rank runs on this one machine, so "inter-node" traffic is shared memory like the rest:
# the times show the cost of the algorithms' extra local work, not the benefit of crossing a slow
# link less often (the byte and message columns are what a real network would see).
# Usage: scripts/bench_a2a.sh [build dir]   (env: TOKENS, ITERS, NP)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BUILD=${1:-build}
TOKENS=${TOKENS:-2048}
ITERS=${ITERS:-20}
NP=${NP:-4}
BIN="$BUILD/bench_token_exchange"
if [ ! -x "$BIN" ]; then
  cmake --build "$BUILD" --target bench_token_exchange >/dev/null
fi
export OMP_NUM_THREADS=1
run() {  # ranks_per_node
  mpirun -np "$NP" --bind-to none "$BIN" --ranks-per-node "$1" --tokens "$TOKENS" --d-model 256,1024 \
    --top-k 2 --experts 8 --iters "$ITERS" --warmup 3
}
echo "== $NP ranks as $((NP / 2)) nodes x 2 (ranks_per_node=2), $(getconf _NPROCESSORS_ONLN) cores"
run 2
echo
echo "== $NP ranks on one node (ranks_per_node=$NP)"
run "$NP"
cat <<'TXT'

Columns: times are medians over iterations of the slowest rank (barrier before each); plan = counts
and slot metadata (once per micro-batch and layer, reused by backward); traffic is per rank, for one
dispatch (combine mirrors it). "x flat" compares dispatch + combine. raw Alltoallv moves pre-packed
per-slot rows only: no counts, no gather of token rows (the MoE layer's local permute) and no
weighted sum (its local combine), which flat and hierarchical include. comm alltoallv is the same
transfer through Communicator::alltoallv (pairwise Isend/Irecv).
TXT
