"""A small training loop on a synthetic RadGenome release (runs on CPU in a few seconds).

1. Writes a synthetic release (the real folder layout) into a temporary folder.
2. Streams (volume, anatomy, sentence) rows through ``make_dataloader`` with 2 workers; each worker applies the
   CT-CLIP preset with int16 output (normalisation happens on the "GPU" side of the loop), and crops the region.
3. Trains a toy 3-D CNN for a few steps.
4. Caches the preprocessed volumes once, then reads them every epoch with ``ThreadedVolumeLoader`` (thread pool,
   reused buffers: the fast path for many epochs).

Real data: point ``UpstreamRelease``/``radgenome_hf.load_dataset`` at the release and use the CT-CLIP defaults
(``target_shape=(480, 480, 240)`` at 0.75 x 0.75 x 1.5 mm); here a 48 x 48 x 32 grid at 3 x 3 x 6 mm keeps CI fast.

    python examples/training_loop.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
from radgenome_hf.training import ThreadedVolumeLoader, make_dataloader
from radgenome_hf.training import CTClipd, ctclip_normalize

TARGET = (48, 48, 32)  # CT-CLIP uses (480, 480, 240)
SPACING = (3.0, 3.0, 6.0)  # CT-CLIP uses (0.75, 0.75, 1.5) mm; the synthetic volumes have 6 mm voxels


class LoadVolume:
    """Open the row's volume lazily (a Volume carries spacing and HU)."""

    def __call__(self, row: dict) -> dict:
        from radgenome_hf.access.volume import Volume

        row["image"] = Volume.open(row["path"])
        return row


class Compose:
    def __init__(self, *ts):
        self.ts = ts

    def __call__(self, row):
        for t in self.ts:
            row = t(row)
        return row


def rows_of(release) -> dict[str, list]:
    from radgenome_hf.names import radgenome_volume_path
    from radgenome_hf.io.tables import read_region_report

    table = read_region_report(release.radgenome_root / "dataset/radgenome_files/train_region_report.csv")
    rows = {"path": [], "volume_name": [], "anatomy": [], "sentence": []}
    for r in table.to_pylist():
        rows["path"].append(str(release.radgenome_root / radgenome_volume_path(r["volume_name"])))
        rows["volume_name"].append(r["volume_name"])
        rows["anatomy"].append(r["anatomy"])
        rows["sentence"].append(r["sentence"])
    return rows


def main() -> None:
    import datasets

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        release = write_release(Path(tmp) / "release", SyntheticConfig(n_train_patients=2, n_valid_patients=0),
                                progress=False)
        ds = datasets.Dataset.from_dict(rows_of(release)).to_iterable_dataset(num_shards=4)
        transform = Compose(LoadVolume(), CTClipd(keys="image", target_spacing=SPACING, target_shape=TARGET, output="int16"))
        loader = make_dataloader(ds, batch_size=4, num_workers=2, transform=transform)

        model = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
            torch.nn.Linear(4, 1),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        t0 = time.perf_counter()
        n = 0
        for step, batch in enumerate(loader):
            x = ctclip_normalize(batch["image"])  # int16 HU -> [-1, 1] float32 (do this on the GPU)
            assert batch["image"].dtype == torch.int16 and x.dtype == torch.float32
            y = torch.tensor([1.0 if "nodule" in s else 0.0 for s in batch["sentence"]])[:, None]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += x.shape[0]
            if step >= 5:
                break
        print(f"streamed {n} rows in {time.perf_counter() - t0:.1f} s, last loss {loss.item():.3f}")

        # prepared cache once, then fast epochs from reused buffers
        from radgenome_hf.access.cache import PreparedCache
        from radgenome_hf.training import ctclip_preprocess
        from radgenome_hf.access.volume import Volume

        cache = PreparedCache(Path(tmp) / "cache")
        files = []
        for path in sorted(set(rows_of(release)["path"])):
            t = ctclip_preprocess(Volume.open(path), target_spacing=SPACING, target_shape=TARGET, output="int16")[0].numpy()
            files.append(cache.put_array(cache.key_for(path, "ctclip-int16", shape=TARGET), t))
        ring = ThreadedVolumeLoader(files, num_threads=2)
        for epoch in range(3):
            for sample in ring:
                x = ctclip_normalize(sample["image"])[None, None]
                model(x)
        print(f"{len(files)} cached volumes x 3 epochs; ring allocations: {ring.allocations}")


if __name__ == "__main__":
    main()
