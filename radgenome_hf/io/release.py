"""Find the files of an upstream release (RadGenome-ChestCT + CT-RATE), locally or on the Hub.

An :class:`UpstreamRelease` knows where each CSV, volume and mask source is. A local ``data_dir`` may be

* a folder holding ``RadGenome-ChestCT/`` and/or ``CT-RATE/`` (what ``radgenome-hf synth`` writes), or
* a RadGenome root (it has ``dataset/radgenome_files/``) or a CT-RATE root (``dataset/radiology_text_reports/``), or
* an ``hf://datasets/<org>/<name>[@<revision>]`` URL.

With no ``data_dir`` the upstream Hub repos are used (``RadGenome/RadGenome-ChestCT``; ``ibrahimhamamci/CT-RATE``
for reports, which is gated).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import HubAccessError, ReleaseNotFoundError
from .hub import CTRATE_REPO, hub_error, is_url, local_path
from ..names import (
    CTRATE_LABEL_SPLIT,
    CTRATE_REPORT_SPLIT,
    RADGENOME_CSV_SPLIT,
    MaskKind,
    Split,
    VolumeName,
    ctrate_volume_path,
    mask_dir,
    radgenome_csv_name,
    radgenome_volume_path,
)

RADGENOME_REPO = "RadGenome/RadGenome-ChestCT"
RADGENOME_DIRNAME = "RadGenome-ChestCT"
CTRATE_DIRNAME = "CT-RATE"


@dataclass
class UpstreamRelease:
    """The located roots of a release. Build with :meth:`discover`."""

    radgenome_root: str | None
    ctrate_root: str | None
    token: str | bool | None = None
    _fs: object = field(default=None, repr=False)

    # -- discovery -------------------------------------------------------------------------------------
    @classmethod
    def discover(
        cls,
        data_dir: str | os.PathLike | None = None,
        *,
        radgenome_dir: str | os.PathLike | None = None,
        ctrate_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        need: str = "radgenome",
    ) -> "UpstreamRelease":
        """Locate a release. ``need`` ("radgenome" or "ctrate") says which part the caller cannot do without."""
        rg = str(radgenome_dir) if radgenome_dir is not None else None
        ct = str(ctrate_dir) if ctrate_dir is not None else None
        if data_dir is None and rg is None and ct is None:
            return cls._from_hub_defaults(token, need)
        if data_dir is not None:
            d = str(data_dir)
            if is_url(d):
                rg = rg or d
            else:
                root = Path(d).expanduser()
                if not root.is_dir():
                    raise ReleaseNotFoundError(
                        f"release folder {root} does not exist: pass data_dir=<folder holding RadGenome-ChestCT/ "
                        "and/or CT-RATE/ (or a RadGenome root with dataset/radgenome_files/)>; "
                        "`radgenome-hf synth OUT` writes a small synthetic one"
                    )
                if (root / RADGENOME_DIRNAME).is_dir():
                    rg = rg or str(root / RADGENOME_DIRNAME)
                if (root / CTRATE_DIRNAME).is_dir():
                    ct = ct or str(root / CTRATE_DIRNAME)
                if (root / "dataset" / "radgenome_files").is_dir() or (root / "dataset").is_dir() and any(
                    (root / "dataset").glob("*_preprocessed")
                ):
                    rg = rg or str(root)
                if (root / "dataset" / "radiology_text_reports").is_dir():
                    ct = ct or str(root)
                if rg is None and ct is None:
                    raise ReleaseNotFoundError(
                        f"{root} holds no RadGenome-ChestCT or CT-RATE release: expected RadGenome-ChestCT/dataset/"
                        "radgenome_files/ or CT-RATE/dataset/radiology_text_reports/ (or those dataset/ folders "
                        "directly)"
                    )
        release = cls(rg, ct, token)
        if need == "any" and rg is None and ct is None:
            raise ReleaseNotFoundError(f"no release found in {data_dir}")
        if need == "radgenome" and rg is None:
            raise ReleaseNotFoundError(
                f"no RadGenome-ChestCT release found in {data_dir}: this config needs dataset/radgenome_files/"
            )
        if need == "ctrate" and ct is None:
            raise ReleaseNotFoundError(
                f"no CT-RATE release found in {data_dir}: the reports config needs CT-RATE's "
                "dataset/radiology_text_reports/ (pass ctrate_dir=… if it lives elsewhere)"
            )
        return release

    @classmethod
    def _from_hub_defaults(cls, token: str | bool | None, need: str) -> "UpstreamRelease":
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise HubAccessError(
                "no data_dir was given, so the upstream release would be read from the Hugging Face Hub "
                f"({RADGENOME_REPO}, and the gated {CTRATE_REPO} for reports), but offline mode is on "
                "(HF_HUB_OFFLINE=1). Point at a local copy instead: "
                "radgenome_hf.load_dataset('vqa', data_dir='/path/to/release') — or make a small synthetic one with "
                "`radgenome-hf synth ./release`."
            )
        return cls(f"hf://datasets/{RADGENOME_REPO}", f"hf://datasets/{CTRATE_REPO}", token)

    # -- file access -----------------------------------------------------------------------------------
    @property
    def fs(self):
        """The fsspec filesystem for hf:// roots (local roots use the OS directly)."""
        if self._fs is None:
            from huggingface_hub import HfFileSystem

            self._fs = HfFileSystem(token=self.token)
        return self._fs

    def exists(self, path: str | None) -> bool:
        if path is None:
            return False
        if is_url(path):
            try:
                return self.fs.exists(path)
            except Exception as exc:  # noqa: BLE001 - translated into a message that says what to do
                raise hub_error(exc, f"reading {path}") from exc
        return os.path.exists(path)

    def open(self, path: str, mode: str = "rb"):
        if is_url(path):
            try:
                return self.fs.open(path, mode)
            except Exception as exc:  # noqa: BLE001
                raise hub_error(exc, f"reading {path}") from exc
        return open(path, mode)

    def _join(self, root: str | None, rel: str) -> str | None:
        if root is None:
            return None
        return posixpath.join(root, rel) if is_url(root) else os.path.join(root, rel)

    # -- RadGenome files -------------------------------------------------------------------------------
    def radgenome_csv(self, split: Split, table: str) -> str | None:
        """Path of ``dataset/radgenome_files/<split>_<table>.csv`` if it exists."""
        p = self._join(self.radgenome_root, f"dataset/radgenome_files/{radgenome_csv_name(split, table)}")
        return p if self.exists(p) else None

    def radgenome_volume(self, name: VolumeName | str) -> str | None:
        return self._join(self.radgenome_root, radgenome_volume_path(name))

    def has_volume_tree(self, split: Split, which: str = "radgenome") -> bool:
        """Whether the release has any volume folder for a split (a CSV-only copy has none)."""
        if which == "radgenome":
            p = self._join(self.radgenome_root, f"dataset/{split}_preprocessed")
        else:
            p = self._join(self.ctrate_root, f"dataset/{split}")
            q = self._join(self.ctrate_root, f"dataset/{split}_fixed")
            return self.exists(p) or self.exists(q)
        return self.exists(p)

    def qa_template_files(self) -> dict[str, bytes]:
        """Upstream ``dataset/qa_templates/*_template.json`` files, if the release ships them."""
        root = self._join(self.radgenome_root, "dataset/qa_templates")
        if root is None or is_url(root) or not os.path.isdir(root):
            return {}
        return {
            os.path.join(root, f): Path(root, f).read_bytes()
            for f in sorted(os.listdir(root))
            if f.endswith("_template.json")
        }

    def mask_source(self, split: Split, kind: MaskKind):
        """Where a split's masks of a kind are (:class:`radgenome_hf.io.archives.MaskSource`): folder preferred, then
        ``.tar.gz``, then split parts; ``None`` if the release has none.

        On the Hub, a mask archive (or its parts) is downloaded once into the Hugging Face cache (resumable,
        with the token) and then read in one local pass; per-structure mask folders on the Hub are not listed
        (millions of files), so such releases ground to region/whole scan unless a local copy is given.
        """
        from .archives import find_mask_sources

        root = self._join(self.radgenome_root, "dataset")
        if root is None:
            return None
        if is_url(root):
            return self._remote_mask_source(root, split, kind)
        if not os.path.isdir(root):
            return None
        return find_mask_sources(root, split, kind)

    def _remote_mask_source(self, root: str, split: Split, kind: MaskKind):
        from .archives import MaskSource

        try:
            names = {p.rsplit("/", 1)[-1] for p in self.fs.ls(root, detail=False)}
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise hub_error(exc, f"listing {root}") from exc
        base = f"{split}_{kind}_mask"
        token = {self._repo_id(): self.token} if isinstance(self.token, str) else None
        if f"{base}.tar.gz" in names:
            return MaskSource("tar.gz", (Path(local_path(f"{root}/{base}.tar.gz", token)),), split, kind)
        parts = sorted(n for n in names if n.startswith(base + "_") and n[len(base) + 1:].isalpha())
        parts = parts or sorted(n for n in names if n.startswith(f"{base}.tar.gz.part-"))
        if parts:
            return MaskSource("split", tuple(Path(local_path(f"{root}/{n}", token)) for n in parts), split, kind)
        return None

    def _repo_id(self) -> str:
        rest = (self.radgenome_root or "")[len("hf://datasets/"):]
        org, name = rest.split("/")[:2]
        return f"{org}/{name.split('@')[0]}"

    def generated_rows(self, kind: str, split: Split) -> str | None:
        """Rows the generation module wrote for a derived config: ``dataset/<kind>/<split>.jsonl``."""
        return self._join(self.radgenome_root, generated_rows_relpath(kind, split))

    def mask_folder(self, name: VolumeName | str, kind: MaskKind) -> str | None:
        return self._join(self.radgenome_root, mask_dir(name, kind))

    # -- CT-RATE files ---------------------------------------------------------------------------------
    def ctrate_reports(self, split: Split) -> str | None:
        p = self._join(self.ctrate_root, f"dataset/radiology_text_reports/{CTRATE_REPORT_SPLIT[split]}_reports.csv")
        return p if self.exists(p) else None

    def ctrate_metadata(self, split: Split) -> str | None:
        p = self._join(self.ctrate_root, f"dataset/metadata/{CTRATE_REPORT_SPLIT[split]}_metadata.csv")
        return p if self.exists(p) else None

    def ctrate_labels(self, split: Split) -> str | None:
        p = self._join(
            self.ctrate_root, f"dataset/multi_abnormality_labels/{CTRATE_LABEL_SPLIT[split]}_predicted_labels.csv"
        )
        return p if self.exists(p) else None

    def ctrate_volume(self, name: VolumeName | str) -> tuple[str | None, bool]:
        """(path, fixed): the ``*_fixed`` volume when present, else the v1 volume (blank header)."""
        fixed = self._join(self.ctrate_root, ctrate_volume_path(name, fixed=True))
        if fixed is not None and (is_url(fixed) or os.path.exists(fixed)):
            return fixed, True
        return self._join(self.ctrate_root, ctrate_volume_path(name)), False

    def fingerprint(self) -> str:
        """A short hash of what the release holds now: it changes when any file the builder reads changes.

        Local roots: every file's size, mtime, inode and ctime (a file edited in place, or rewritten with its
        mtime restored, changes its ctime), except inside per-volume mask folders (``seg_<volume>/``, millions of
        files in the real release), which count by their folder's own stat (it changes when a file in it is
        added, removed or atomically replaced). ``hf://`` roots: the commit their revision resolves to (the URL
        itself when the Hub cannot be asked).
        """
        h = hashlib.sha256()
        for root in (self.radgenome_root, self.ctrate_root):
            h.update(f"\0root:{root}\0".encode())
            if root is None:
                continue
            if is_url(root):
                h.update(_remote_revision(root, self.token).encode())
            elif os.path.isdir(root):
                for rel, st in _walk_stats(root):
                    h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}\n".encode())
        return h.hexdigest()[:16]


def _walk_stats(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, stat) of every file under ``root`` in sorted order; ``seg_*`` folders as one entry each.

    Hidden names (temporary files of writers in progress) are skipped."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                if e.is_dir():
                    if e.name.startswith("seg_"):
                        yield rel + "/", e.stat()
                    else:
                        subdirs.append(rel)
                else:
                    yield rel, e.stat()
            except FileNotFoundError:  # removed while walking
                continue
        stack.extend(reversed(subdirs))


def _remote_revision(root: str, token: str | bool | None) -> str:
    """The commit an ``hf://datasets/<repo>[@rev]`` root resolves to (one request; the URL when unreachable)."""
    from .hub import parse_hf_url

    u = parse_hf_url(root.rstrip("/") + "/")
    if u.revision and len(u.revision) == 40 and all(c in "0123456789abcdef" for c in u.revision):
        return u.revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(u.repo_id, revision=u.revision, token=token).sha or root
    except Exception:  # noqa: BLE001 - offline or unreachable: nothing newer could be read either
        return root


def generated_rows_relpath(kind: str, split: Split) -> str:
    """Where a release keeps the rows of a generated config (``scene_graph``, ``anatomy_pairs``)."""
    return f"dataset/{kind}/{RADGENOME_CSV_SPLIT[split]}.jsonl"


