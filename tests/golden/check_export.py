"""Loads a `switchyard export` folder (Hugging Face layout) into the independent PyTorch reference
(torch_moe.py), runs the windows of an llm.c token shard the way `switchyard eval` does (window w =
tokens [w*(T+1), (w+1)*(T+1)): inputs the first T, targets the next T), and compares the logits and
the mean loss with Switchyard's (`switchyard eval --dump-logits`). Prints one JSON line; exit 1 when a
comparison fails.

  check_export.py --model DIR --tokens SHARD.bin --seq-len T --windows W \
      --switchyard-logits FILE --switchyard-loss L [--tol 1e-5] [--transformers]

--transformers: the same through transformers' AutoModelForCausalLM and AutoTokenizer (when
transformers is importable; otherwise prints "transformers not installed: skipped" and checks the rest).
Run with Debian's PyTorch (/usr/bin/python3).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_moe  # noqa: E402


def read_llmc(path: str) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1, f"{path}: not an llm.c v1 shard"
    return np.fromfile(path, dtype="<u2", offset=1024, count=int(header[2])).astype(np.int64)


def windows(tokens: np.ndarray, T: int, W: int):
    n = min(W, len(tokens) // (T + 1))
    seq = torch.from_numpy(tokens[: n * (T + 1)].reshape(n, T + 1))
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def compare(name: str, got: np.ndarray, ref: np.ndarray, tol: float) -> dict:
    """Largest logit difference relative to the largest logit magnitude."""
    scale = float(np.abs(ref).max())
    rel = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) / scale
    return {"what": name, "max_rel": rel, "ok": rel <= tol}


def check_tokenizer(model_dir: str) -> dict:
    """The byte-level tokenizer files: id = byte, byte_fallback, eos = token 0."""
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    m = tok["model"]
    vocab = m["vocab"]
    ok = (m["type"] == "BPE" and m["byte_fallback"] is True and m["merges"] == []
          and all(vocab.get(f"<0x{b:02X}>") == b for b in range(256)))
    cfg = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
    st = json.load(open(os.path.join(model_dir, "special_tokens_map.json")))
    gen = json.load(open(os.path.join(model_dir, "generation_config.json")))
    ok = ok and cfg["eos_token"] == st["eos_token"] == "<0x00>" and gen["eos_token_id"] == 0
    return {"what": "tokenizer files", "ok": bool(ok)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--windows", type=int, required=True)
    ap.add_argument("--switchyard-logits", required=True)
    ap.add_argument("--switchyard-loss", type=float, required=True)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--transformers", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    cfg, state = torch_moe.load_hf_checkpoint(a.model)
    model = torch_moe.MoeTransformer(cfg)
    model.load_hf_state(state)
    model.eval()
    x, y = windows(read_llmc(a.tokens), a.seq_len, a.windows)
    V = model.cfg["vocab_size"]
    sy = np.fromfile(a.switchyard_logits, dtype="<f4").reshape(-1, V)
    with torch.no_grad():
        out = model(x, y)
    ref = out.logits.numpy()
    assert sy.shape == ref.shape, f"switchyard logits {sy.shape} vs reference {ref.shape}"
    loss = float(out.ce)
    loss_rel = abs(loss - a.switchyard_loss) / abs(loss)
    checks = [compare("reference logits", sy, ref, a.tol),
              {"what": "reference loss", "loss": loss, "switchyard": a.switchyard_loss, "rel": loss_rel,
               "ok": loss_rel <= a.tol},
              check_tokenizer(a.model)]
    if a.transformers:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers not installed: skipped", file=sys.stderr)
            checks.append({"what": "transformers", "skipped": "transformers not installed", "ok": True})
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer
            hf = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
            hf.eval()
            with torch.no_grad():
                hl = hf(input_ids=x).logits.reshape(-1, V).float()
            checks.append(compare("transformers logits", sy, hl.numpy(), a.tol))
            hf_loss = float(F.cross_entropy(hl, y.reshape(-1)))
            checks.append({"what": "transformers loss", "loss": hf_loss,
                           "rel": abs(hf_loss - a.switchyard_loss) / abs(hf_loss),
                           "ok": abs(hf_loss - a.switchyard_loss) <= a.tol * abs(hf_loss)})
            tk = AutoTokenizer.from_pretrained(a.model)
            text = "héllo, wörld\n"
            ids = tk(text)["input_ids"]
            checks.append({"what": "transformers tokenizer", "ids": ids,
                           "ok": ids == list(text.encode()) and tk.decode(ids) == text
                           and tk.eos_token_id == 0})
    ok = all(c["ok"] for c in checks)
    print(json.dumps({"model": a.model, "ok": ok, "checks": checks}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
