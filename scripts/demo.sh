#!/usr/bin/env bash
# scripts/demo.sh: the main job on a small real corpus, end to end:
# install + build, prepare the license and copyright texts every Debian machine has, train
# configs/tiny.yaml under mpirun, evaluate the trained model, export it in the Hugging Face layout
# (bf16, sharded safetensors, byte-level tokenizer), draw its figures (scripts/plot.py), sample a
# paragraph from it and say where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

source scripts/corpus.sh
ensure_corpus

# Two MPI ranks with the 8 experts of every layer spread over them (expert parallelism 2, flat or
# hierarchical token exchange chosen by the cost model); micro-batch 4 per rank keeps the global
# batch of configs/tiny.yaml (8 sequences), so RANKS=1 trains the same model. --overwrite: a demo
# run again replaces the earlier demo's run and export (only what Switchyard wrote there).
RANKS=${RANKS:-2}
export OMP_NUM_THREADS=$(( SWITCHYARD_CORES / RANKS > 0 ? SWITCHYARD_CORES / RANKS : 1 ))
mpirun -np "$RANKS" --bind-to none build/switchyard train --config configs/tiny.yaml --run-dir runs/tiny --overwrite \
  --set parallel.expert_parallel="$RANKS" --set train.micro_batch=$(( 8 / RANKS )) "$@"

echo "== evaluation of the trained model on the validation split =="
build/switchyard eval --checkpoint runs/tiny --data "$CORPUS" --split valid
echo "== export of the latest checkpoint for transformers / vLLM =="
build/switchyard export --checkpoint runs/tiny --out runs/tiny/export --dtype bf16 --overwrite
echo "== figures of the run (scripts/plot.py; docs/OBSERVING.md, Plots) =="
/usr/bin/python3 scripts/plot.py runs/tiny
echo "== a paragraph sampled from the trained model (docs/OBSERVING.md, Sampling text) =="
build/switchyard generate --checkpoint runs/tiny --prompt "This program is free software; you can" \
  --max-new-tokens 300 --temperature 0.8 --top-p 0.95 --seed 1
echo
echo "Results: runs/tiny/metrics.jsonl (per-step metrics), runs/tiny/config.yaml (resolved config),"
echo "         runs/tiny/model/ (fp32 weights, Hugging Face layout, for --init-from),"
echo "         runs/tiny/export/ (bf16 export: config.json, safetensors shards + index, tokenizer;"
echo "         AutoModelForCausalLM.from_pretrained('runs/tiny/export') loads it),"
echo "         runs/tiny/plots/ (loss, lr, tokens/s and per-layer expert-load figures, PNG)"
