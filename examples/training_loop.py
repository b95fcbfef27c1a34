"""The training loop a user should write: ``load_dataset`` rows, the CT-CLIP preset, ``make_dataloader``.

1. Writes a synthetic release (the real folder layout) into a temporary folder.
2. ``datasets.load_dataset("radgenome", "grounded_reports", ...)``: one row per (volume, anatomy) sentence group;
   the volume decodes lazily, through the prepared cache.
3. ``make_dataloader(..., transform=CTClipd(..., output="int16"))``: the preset runs in a thread pool; its output
   is cached, so from epoch 2 on each sample is a GIL-free decode of the finished grid into reused buffers.
4. Trains a toy 3-D CNN; normalisation happens on the "GPU" side of the loop (``ctclip_normalize``).

Real data: ``data_dir=`` the release and the CT-CLIP defaults (``CTClipd("volume", output="int16")``: 480 x 480 x
240 at 0.75 x 0.75 x 1.5 mm); here a 48 x 48 x 32 grid at 3 x 3 x 6 mm keeps CI fast.

    python examples/training_loop.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import datasets
import torch

import radgenome_hf  # noqa: F401 - registers the "radgenome" builder with datasets
from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
from radgenome_hf.training import CTClipd, ctclip_normalize, make_dataloader

TARGET = (48, 48, 32)  # CT-CLIP uses (480, 480, 240), the default
SPACING = (3.0, 3.0, 6.0)  # CT-CLIP uses (0.75, 0.75, 1.5) mm, the default; the synthetic volumes have 6 mm voxels


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        release = write_release(Path(tmp) / "release", SyntheticConfig(n_train_patients=2, n_valid_patients=0),
                                progress=False)
        ds = datasets.load_dataset(
            "radgenome", "grounded_reports", data_dir=str(release.root), split="train",
            cache_dir=f"{tmp}/hf", volume_cache=f"{tmp}/volumes", mask_cache_dir=f"{tmp}/masks",  # default: ~/.cache
        )
        preset = CTClipd("volume", target_spacing=SPACING, target_shape=TARGET, output="int16")
        loader = make_dataloader(ds, batch_size=4, num_workers=2, shuffle=True, transform=preset)

        model = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
            torch.nn.Linear(4, 1),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for epoch in range(2):
            t0, n = time.perf_counter(), 0
            for batch in loader:
                x = ctclip_normalize(batch["volume"])  # int16 HU -> [-1, 1] float32 (do this on the GPU)
                assert batch["volume"].dtype == torch.int16 and x.shape[1:] == (1, TARGET[2], TARGET[0], TARGET[1])
                y = torch.tensor([1.0 if "nodule" in s else 0.0 for s in batch["sentence"]])[:, None]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += x.shape[0]
            print(f"epoch {epoch}: {n} rows in {time.perf_counter() - t0:.1f} s, last loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
