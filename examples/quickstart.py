"""Quick start: a synthetic release, every config through datasets, lazy volumes and masks.

Run: python examples/quickstart.py  (offline, a few seconds)
"""

import tempfile

import datasets

import radgenome_hf  # registers the "radgenome" builder
from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

with tempfile.TemporaryDirectory() as tmp:
    release = write_release(f"{tmp}/release", SyntheticConfig(), progress=False)

    vqa = datasets.load_dataset("radgenome", "vqa", data_dir=str(release.root), cache_dir=f"{tmp}/hf")
    row = vqa["train"][0]
    print(row["question"], "->", row["answer"])
    print(row["volume"])                      # lazy: nothing read yet
    print(row["mask"])                        # the grounding mask, decoded on demand
    crop = row["volume"].crop(row["mask"].bbox)  # only the region
    print("region crop", crop.shape, crop.dtype)

    stream = radgenome_hf.load_dataset("grounded_reports", data_dir=str(release.root), split="train", streaming=True)
    first = next(iter(stream))
    print(first["anatomy"] or "(whole scan)", "|", first["sentence"][:80])
