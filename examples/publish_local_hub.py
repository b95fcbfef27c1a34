"""Publish a packed release to a local Hub-compatible server, verify it, tag it, load it back.

    python examples/publish_local_hub.py            # a few seconds, no network (127.0.0.1 only)

What it shows (the same calls work against the real Hub: drop ``endpoint=``, pass your token):

1. start :class:`radgenome_hf.testing.hub_server.HubServer` on a free port;
2. build a small release folder: with ``radgenome_hf.publish.build.build_release`` on a synthetic
   upstream release when that builder is available, else a tiny hand-made parquet release with a card
   from :func:`radgenome_hf.publish.card.render_card`;
3. ``publish_release(..., branch="staging", tag="v0.1")``: one commit, loaded back in a fresh process,
   then tagged; a second publish uploads nothing;
4. ``datasets.load_dataset(repo, "vqa", revision="v0.1")`` in this process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

# huggingface_hub reads these once, at import: set them first. The test server speaks the classic LFS
# protocol, not Xet; a private HF_HOME keeps caches of this demo away from yours.
_HOME = tempfile.mkdtemp(prefix="radgenome-publish-demo-")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HOME"] = _HOME
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_TOKEN", None)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from radgenome_hf.publish.card import ConfigSpec, render_card  # noqa: E402
from radgenome_hf.publish.hub import publish_release  # noqa: E402
from radgenome_hf.testing.hub_server import HubServer  # noqa: E402

REPO = "radgenome/radgenome-chestct-demo"


def hand_made_release(out: Path) -> Path:
    """Two configs of parquet, a manifest of row counts and a card with `configs:`."""
    rows = {"vqa": {"train": 6, "validation": 2}, "reports": {"train": 3, "validation": 1}}
    specs = []
    for cfg, splits in rows.items():
        (out / cfg).mkdir(parents=True, exist_ok=True)
        for split, n in splits.items():
            prefix = "train" if split == "train" else "valid"
            names = [f"{prefix}_{i // 2 + 1}_a_1" for i in range(n)]
            if cfg == "vqa":
                t = pa.table({"volume_name": names, "question_type": ["presence"] * n,
                              "question": [f"Is there a lung nodule in the left lung? ({i})" for i in range(n)],
                              "answer": ["Yes." if i % 2 else "No." for i in range(n)]})
            else:
                t = pa.table({"volume_name": names, "findings": [f"No acute findings ({i})." for i in range(n)]})
            pq.write_table(t, out / cfg / f"{split}-00000-of-00001.parquet", compression="zstd")
        specs.append(ConfigSpec(cfg, {s: f"{cfg}/{s}-*.parquet" for s in splits}, default=cfg == "vqa"))
    (out / "README.md").write_text(render_card(specs, {"rows": rows}, [], repo_id=REPO, revision="v0.1"),
                                   encoding="utf-8")
    (out / "release_manifest.json").write_text(json.dumps({"configs": rows}))
    return out


def built_release(work: Path) -> Path:
    """The packed release built from a synthetic upstream release (what maintainers publish)."""
    from radgenome_hf.publish.build import build_release
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    upstream = write_release(work / "upstream", SyntheticConfig(), progress=False)
    report = build_release(upstream.root, work / "release")
    print(report)
    return report.folder


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="radgenome-release-"))
    folder = built_release(work)
    with HubServer() as hub:
        print(f"local hub at {hub.endpoint}; release folder {folder}")
        report = publish_release(folder, REPO, branch="staging", tag="v0.1", endpoint=hub.endpoint,
                                 token=hub.token)
        print(report.summary())
        again = publish_release(folder, REPO, branch="staging", endpoint=hub.endpoint, token=hub.token,
                                verify=False)
        print(f"second publish: {again.uploaded_files} files uploaded, {again.skipped_files} unchanged, "
              f"{hub.counts(REPO)['lfs_upload']} LFS uploads in total")

        with hub.patch_client():  # point this process's datasets at the local hub
            import datasets

            datasets.disable_progress_bars()
            vqa = datasets.load_dataset(REPO, "vqa", revision="v0.1", token=hub.token,
                                        cache_dir=os.path.join(_HOME, "datasets"))
            print(vqa)
            print("first row:", {k: v for k, v in vqa["train"][0].items() if isinstance(v, (str, int))})
        ok = report.verification is not None and report.verification.ok and report.tag == "v0.1"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
