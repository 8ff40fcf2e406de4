"""Loads a `switchyard export --format gguf` file into llama.cpp (through the llama-cpp-python
bindings) and the matching Hugging Face export into the independent PyTorch reference
(torch_moe.py), evaluates the same token sequence in both, and compares the logits of every
position (largest difference relative to the largest logit magnitude) and the greedy next tokens.
Prints one JSON line; exit 1 when a comparison fails, 0 with "skipped" when llama_cpp is missing.

  check_llamacpp.py --gguf FILE --model HF_DIR [--tol 1e-4] [--text TEXT]

Run with a Python that has Debian's PyTorch and llama_cpp (a venv with --system-site-packages).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_moe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--text", default="the quick brown fox jumps over the lazy dog 1234\nline 7: the ")
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print(json.dumps({"gguf": a.gguf, "ok": True, "skipped": "llama_cpp not installed"}))
        return 0
    tokens = list(a.text.encode())  # byte-level vocabulary: id = byte

    cfg, state = torch_moe.load_hf_checkpoint(a.model)
    model = torch_moe.MoeTransformer(cfg)
    model.load_hf_state(state)
    model.eval()
    with torch.no_grad():
        ref = model(torch.tensor([tokens])).logits.reshape(len(tokens), -1).numpy()

    llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=max(64, len(tokens)), logits_all=True, n_threads=2,
                          n_batch=len(tokens), verbose=False)
    llm.eval(tokens)
    got = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    scale = float(np.abs(ref).max())
    rel = float(np.abs(got - ref).max()) / scale
    greedy = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    meta = llm.metadata
    checks = [{"what": "logits vs PyTorch reference", "max_rel": rel, "ok": rel <= a.tol},
              {"what": "greedy next token agreement", "fraction": greedy, "ok": greedy >= 0.99},
              {"what": "architecture", "value": meta.get("general.architecture"),
               "ok": meta.get("general.architecture") in ("llama", "qwen2moe")}]
    ok = all(c["ok"] for c in checks)
    print(json.dumps({"gguf": a.gguf, "tokens": len(tokens), "ok": ok, "checks": checks}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
