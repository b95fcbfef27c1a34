#!/usr/bin/env python
"""Rebuild a RadGenome release end to end (maintainers' entry script).

    python builder_scripts/rebuild_release.py UPSTREAM OUT [--validation 0.05] [--masks-from release|segment|none]
        [--masks-dir DIR] [--backend threshold] [--seed 0] [--link hardlink] [--grounding lexicon|llm]

Same as ``radgenome-hf generate rebuild``: ingest the upstream folder (CT-RATE reports/labels/metadata +
RadGenome volumes and masks), optionally segment, ground, build VQA, scene graphs and anatomy pairs, split by
patient, and write a NEW release folder in the upstream layout (see radgenome_hf/generate/pipeline.py).
Exit status 1 if an invariant check failed.
"""

from __future__ import annotations

import sys

from radgenome_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", "rebuild", *sys.argv[1:]]))
