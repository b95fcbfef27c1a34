"""Pack an upstream mask source for the whole release: one streaming pass feeding every worker.

The driver reads the source once (:func:`~radgenome_hf.io.archives.iter_masks`: folders, ``.tar.gz`` or split
parts), groups members per volume and hands each volume's member bytes to a worker, which decodes the NIfTI
members and writes ``<out_dir>/<stem>.masks.parquet`` (:meth:`PackedMasks.from_nifti_files`, structures in
ontology-name order, as :mod:`~radgenome_hf.access.maskstore` packs them). At most ``window`` volumes are in
flight, so memory is bounded by a few volumes' masks. Resumable: ``pack.manifest.sqlite`` keys each volume by the
hash of its member names and bytes; an unchanged, packed volume is not decoded again (the archive itself must
still be inflated: gzip cannot seek). A volume whose members do not decode is recorded and skipped.

>>> import tempfile
>>> from radgenome_hf.io.release import UpstreamRelease
>>> from radgenome_hf.generate.runner import make_executor
>>> from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
>>> rel = write_release(tempfile.mkdtemp(), SyntheticConfig(n_train_patients=1, n_valid_patients=0,
...                     shape=(24, 24, 16)), progress=False)
>>> source = UpstreamRelease.discover(rel.root).mask_source("train", "region")
>>> with make_executor(workers=1) as ex:
...     rep = pack_mask_source(source, tempfile.mkdtemp(), ex, progress=False)
>>> sorted(rep.outputs), rep.failed
(['train_1_a_1', 'train_1_b_1'], {})
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..io.archives import MaskSource, iter_masks
from .manifest import Manifest, ManifestKey, params_hash

STAGE = "pack"
VERSION = "1"
MANIFEST_NAME = "pack.manifest.sqlite"

__all__ = ["PackReport", "pack_mask_source", "pack_mask_sources"]


@dataclass
class PackReport:
    """What :func:`pack_mask_source` did: ``outputs`` maps every packed volume to its file."""

    outputs: dict[str, Path] = field(default_factory=dict)
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    structures: int = 0
    seconds: float = 0.0


def _members_hash(members: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(members):
        h.update(name.encode() + b"\0" + hashlib.sha256(members[name]).digest())
    return "sha256:" + h.hexdigest()


def _pack_volume(job: tuple[str, str, dict[str, bytes], str]) -> int:
    """Worker: decode one volume's NIfTI members and write its packed file; returns the structure count."""
    from ..access.masks import PackedMasks
    from ..ontology import normalize_name

    stem, kind, members, out = job
    ordered = dict(sorted(members.items(), key=lambda kv: normalize_name(kv[0])))
    packed = PackedMasks.from_nifti_files(ordered, source=kind)
    packed.save(out)
    return len(packed)


def _volumes(source: MaskSource, progress: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(stem, {structure: bytes})`` per volume, in one pass (a volume is flushed when the stream moves on)."""
    pending: dict[str, dict[str, bytes]] = {}
    current: str | None = None
    for volume, _kind, structure, data in iter_masks(source, progress=progress or None):
        if current is not None and volume.stem != current and current in pending:
            yield current, pending.pop(current)
        current = volume.stem
        pending.setdefault(volume.stem, {})[structure] = data
    yield from pending.items()


def pack_mask_source(source: MaskSource, out_dir: str | Path, executor: cf.Executor, *,
                     window: int | None = None, progress: bool = True) -> PackReport:
    """Pack every volume of ``source`` into ``out_dir`` on ``executor`` (see the module docs)."""
    return pack_mask_sources([(source, out_dir)], executor, window=window, progress=progress)[0]


def pack_mask_sources(sources: Sequence[tuple[MaskSource, str | Path]], executor: cf.Executor, *,
                      window: int | None = None, progress: bool = True) -> list[PackReport]:
    """Pack several sources (each into its folder) as ONE stream of volumes, so the workers never wait for a
    source to finish before the next one's volumes start; one report per source, in order."""
    from .runner import bounded_map

    t0 = time.perf_counter()
    reports = [PackReport() for _ in sources]
    keys: dict[str, tuple[int, ManifestKey]] = {}  # target file -> (source index, key)
    with contextlib.ExitStack() as stack:
        manifests = []
        for _, out_dir in sources:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            manifests.append(stack.enter_context(Manifest(Path(out_dir) / MANIFEST_NAME, STAGE)))

        def jobs() -> Iterator[tuple[str, str, dict[str, bytes], str]]:
            for i, (source, out_dir) in enumerate(sources):
                phash = params_hash({"kind": source.kind})
                for stem, members in _volumes(source, progress):
                    key = ManifestKey(stem, _members_hash(members), STAGE, VERSION, phash)
                    target = Path(out_dir) / f"{stem}.masks.parquet"
                    if manifests[i].is_done(key) and target.is_file():
                        reports[i].skipped += 1
                        reports[i].outputs[stem] = target
                        continue
                    keys[str(target)] = (i, key)
                    yield stem, str(source.kind), members, str(target)

        for job, result in bounded_map(executor, _pack_volume, jobs(), window=window):
            stem, target = job[0], job[3]
            i, key = keys[target]
            report = reports[i]
            if isinstance(result, BaseException):
                err = f"{type(result).__name__}: {result}"
                manifests[i].mark_failed(key, err)
                report.failed[stem] = err
            else:
                manifests[i].mark_done(key, {"masks": Path(target).name, "structures": result})
                report.outputs[stem] = Path(target)
                report.done += 1
                report.structures += result
    for report in reports:
        report.seconds = time.perf_counter() - t0
    return reports
