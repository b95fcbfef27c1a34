"""A finding-aware training loop with exact mid-epoch resume.

1. Writes a synthetic release (the real folder layout) into a temporary folder and loads its ``vqa`` rows.
2. ``FindingAwareSampler``: half of the draws are anatomies the report gives findings for (rare findings
   up-weighted), half anatomies it calls normal; ``SamplePatchd(CentredPatches)`` crops a patch around each drawn
   row's grounding mask, so every sample carries its question, answer, mask and the voxels of its anatomy.
3. Trains a toy 3-D CNN to tell abnormal from normal anatomy, stops after a few steps, saves the model and the
   loader's ``state_dict()``, then resumes in a new loader (as a fresh process would) and checks that the rest of
   the epoch is exactly what an uninterrupted run sees.

    python examples/finding_aware_training.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import radgenome_hf
from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
from radgenome_hf.training import CentredPatches, FindingAwareSampler, SamplePatchd, make_dataloader

PATCH = (16, 16, 8)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="radgenome-finding-aware-"))
    release = write_release(tmp / "release", SyntheticConfig(n_train_patients=3, n_valid_patients=0), progress=False)
    ds = radgenome_hf.load_dataset("vqa", data_dir=str(release.root), split="train")
    sampler = FindingAwareSampler(ds.select_columns(["question_type", "answer"]), num_samples=24,
                                  positive_fraction=0.5, rarity_power=0.5, seed=0)
    crop = SamplePatchd(CentredPatches(PATCH), masks_key="mask", seed=0)

    def loader():
        return make_dataloader(ds, batch_size=4, num_workers=2, transform=crop, sampler=sampler)

    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(batch) -> float:
        x = batch["volume"].float().clamp_(-1000, 1000).div_(1000).unsqueeze(1)
        y = torch.tensor([a != "no findings" for a in batch["answer"]], dtype=torch.float32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    uninterrupted = [list(b["question"]) for b in loader()]
    first = loader()
    seen = []
    for i, batch in enumerate(first):
        print(f"step {i}: loss {step(batch):.3f}, {sum(a != 'no findings' for a in batch['answer'])}/4 abnormal, "
              f"patch {tuple(batch['volume'].shape[1:])}")
        seen.append(list(batch["question"]))
        if i == 2:
            torch.save({"model": model.state_dict(), "loader": first.state_dict()}, tmp / "checkpoint.pt")
            break
    checkpoint = torch.load(tmp / "checkpoint.pt", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    resumed = loader()
    resumed.load_state_dict(checkpoint["loader"])
    for batch in resumed:
        step(batch)
        seen.append(list(batch["question"]))
    assert seen == uninterrupted, "the resumed epoch differs from the uninterrupted one"
    print(f"resumed after 3 steps: {len(seen)} batches, the same samples in the same order as without the stop")


if __name__ == "__main__":
    main()
