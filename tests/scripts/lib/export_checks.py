"""tests/scripts/lib/export_checks.py: shared by the Python read-back checks of the export script
tests (on PYTHONPATH): the tensors of a one-shard Hugging Face export, one ok/FAIL line per check."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.environ["SWITCHYARD_SOURCE_DIR"], "tests", "golden"))
import torch_moe as tm  # noqa: E402  (the reference's safetensors reader)


def load_hf_export(folder):
    """config.json and {name: numpy array} of an export folder whose tensors are in one shard."""
    cfg = json.load(open(f"{folder}/config.json"))
    (shard,) = set(json.load(open(f"{folder}/model.safetensors.index.json"))["weight_map"].values())
    return cfg, {k: v.numpy() for k, v in tm.load_safetensors(f"{folder}/{shard}")[0].items()}


class Checks:
    """check(what, ok) prints "<prefix>: <what, padded to width> ok|FAIL"; exit() fails if any failed."""

    def __init__(self, prefix, width):
        self.prefix, self.width, self.failed = prefix, width, 0

    def __call__(self, what, ok):
        self.failed += not ok
        print(f"{self.prefix}: {what:{self.width}s} {'ok' if ok else 'FAIL'}")

    def exit(self):
        sys.exit(1 if self.failed else 0)
