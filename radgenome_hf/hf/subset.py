"""Subset first: what a subset of a packed release on the Hub costs, before anything moves; then exactly that.

:func:`plan_download` pins the repo to a commit, reads the card and only what it needs of the config's row shards
(their footers, and the filter and reference columns of the row groups whose statistics may match, by byte
ranges), and lists the files the subset needs with their sizes from the Hub's tree and paths-info: the row shards
holding its rows, every file of its volumes (a volume is one file or a folder, e.g. a ``.zarr`` store: the tree
under the row's path is listed), and the masks shards holding its volumes. :func:`download` prints that plan and
fetches those files into the Hugging Face cache (``hf_hub_download`` per file: a dropped connection resumes by
``Range``, files already cached are skipped), with one progress bar in bytes. A plan is saved per commit and
subset, so a ``--dry-run`` followed by the download reads nothing twice, and offline work finds it again.

:class:`RowFilter` is the one definition of a subset, used here and by
:func:`radgenome_hf.hf.loading.load_packed` (``volumes=``, ``patients=``, …).

>>> import pyarrow as pa
>>> f = RowFilter.make(patients=["1"], anatomy=["lung"])
>>> t = pa.table({"volume_name": ["train_1_a_1", "train_1_a_1", "train_2_a_1"], "patient_id": ["train_1"] * 2 +
...              ["train_2"], "anatomy": ["lung/left lung", "heart", "lung"]})
>>> f.mask(t, "train").to_pylist()
[True, False, False]
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import HubAccessError, RadGenomeError
from ..names import VolumeName

__all__ = ["DownloadPlan", "DownloadReport", "PlannedFile", "RowFilter", "download", "plan_download"]

#: the split of a patient number given bare (``--patients 1``): volume names begin with these
_NAME_SPLIT = {"train": "train", "validation": "valid"}
#: the columns whose values name the files a row needs
_REFERENCES = ("volume", "mask", "masks")
_THREADS = 8


def _values(x: str | Iterable[Any] | None) -> tuple[str, ...]:
    if x is None:
        return ()
    if isinstance(x, (str, int)):
        x = str(x).split(",")
    return tuple(dict.fromkeys(str(v).strip() for v in x if str(v).strip()))


@dataclass(frozen=True)
class RowFilter:
    """Which rows a subset holds: all given conditions must hold; within one, any value matches.

    * ``volumes``: volume names (``train_1_a_1``, ``.nii.gz`` allowed);
    * ``patients``: patient ids (``train_1``) or bare numbers (``1``: that patient of the split being read);
    * ``anatomy``: anatomy paths (``lung/left lung``: that path and everything under it) or node names
      (``left lung``: any path through it), on ``anatomy`` / ``anatomy_path``;
    * ``question_types``: VQA question types (``presence``, …).
    """

    volumes: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    anatomy: tuple[str, ...] = ()
    question_types: tuple[str, ...] = ()

    @classmethod
    def make(cls, volumes: Any = None, patients: Any = None, anatomy: Any = None,
             question_types: Any = None) -> "RowFilter":
        """Normalise lists or comma-separated strings (volume names parsed, anatomy paths normalised, question
        types checked)."""
        from ..ontology import normalize_path
        from .schema import VQA_TYPES

        types = tuple(q.lower() for q in _values(question_types))
        unknown = sorted(set(types) - set(VQA_TYPES))
        if unknown:
            raise RadGenomeError(f"unknown question type(s) {unknown}: choose among {', '.join(VQA_TYPES)}")
        return cls(tuple(VolumeName.parse(v).stem for v in _values(volumes)), _values(patients),
                   tuple(normalize_path(a) for a in _values(anatomy)), types)

    @property
    def active(self) -> bool:
        return bool(self.volumes or self.patients or self.anatomy or self.question_types)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in asdict(self).items() if v}

    def _patient_ids(self, split: str) -> list[str]:
        prefix = _NAME_SPLIT.get(split, split)
        return [p if "_" in p else f"{prefix}_{int(p)}" for p in self.patients]

    def _anatomy_column(self, names: Sequence[str]) -> str:
        for c in ("anatomy", "anatomy_path"):
            if c in names:
                return c
        raise RadGenomeError("--anatomy filters rows by their anatomy path: this config's rows have none (use it "
                             "with vqa, grounded_reports or anatomy_pairs)")

    def columns(self, names: Sequence[str]) -> list[str]:
        """The columns (of a config whose columns are ``names``) that this filter reads; a condition the config's
        rows cannot answer is an error, never an empty subset."""
        out = []
        if self.volumes:
            out.append("volume_name")
        if self.patients:
            out.append("patient_id")
        if self.anatomy:
            out.append(self._anatomy_column(names))
        if self.question_types:
            if "question_type" not in names:
                raise RadGenomeError("--question-type filters VQA rows: use it with the vqa config")
            out.append("question_type")
        return out

    def prune(self, split: str) -> dict[str, list[str]]:
        """{column: values} that row-group statistics can rule out (exact-match conditions)."""
        out = {}
        if self.volumes:
            out["volume_name"] = list(self.volumes)
        if self.patients:
            out["patient_id"] = self._patient_ids(split)
        if self.question_types:
            out["question_type"] = list(self.question_types)
        return out

    def mask(self, table: Any, split: str) -> Any:
        """A boolean array: which rows of ``table`` (a pyarrow table of :meth:`columns`) hold."""
        import pyarrow as pa
        import pyarrow.compute as pc

        keep = pa.array([True] * table.num_rows)
        for column, values in self.prune(split).items():
            keep = pc.and_(keep, pc.is_in(table[column], pa.array(values, pa.string())))
        if self.anatomy:
            col = table[self._anatomy_column(table.column_names)]
            hit = pa.array([False] * table.num_rows)
            for a in self.anatomy:
                one = pc.or_(pc.equal(col, a), pc.starts_with(col, a + "/"))
                if "/" not in a:
                    one = pc.or_(one, pc.match_substring_regex(col, f"(^|/){re.escape(a)}(/|$)"))
                hit = pc.or_(hit, one)
            keep = pc.and_(keep, pc.fill_null(hit, False))
        return pc.fill_null(keep, False)


@dataclass
class PlannedFile:
    path: str
    size: int
    kind: str  # "rows" | "volume" | "masks"
    split: str | None = None


@dataclass
class DownloadPlan:
    """The files a subset needs, with their sizes (nothing downloaded to size them)."""

    repo_id: str
    revision: str  # the commit everything was planned (and is fetched) at
    config: str
    splits: list[str]
    filters: dict[str, list[str]]
    files: list[PlannedFile]
    rows: dict[str, int]  # matching rows per split
    volumes: list[str]
    missing: list[str] = field(default_factory=list)  # files rows reference that the repo does not hold
    planning_bytes: int = 0  # bytes read to make the plan (card, shard footers, filter and reference columns)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for f in self.files:
            n, b = out.get(f.kind, (0, 0))
            out[f.kind] = (n + 1, b + f.size)
        return out

    def urls(self, kind: str | None = None, split: str | None = None) -> list[str]:
        """``hf://`` URLs (pinned to the plan's commit) of the planned files of a kind / split."""
        from ..io.hub import hf_url

        return [hf_url(self.repo_id, f.path, self.revision) for f in self.files
                if (kind is None or f.kind == kind) and (split is None or f.split == split)]

    def summary(self) -> str:
        """The plan as a small table: files and bytes per kind, and in total."""
        from ..access._format import format_bytes

        head = (f"{self.repo_id}@{self.revision[:12]} {self.config} [{', '.join(self.splits)}]"
                + (f" {json.dumps(self.filters)}" if self.filters else "")
                + f": {sum(self.rows.values())} rows, {len(self.volumes)} volumes")
        lines = [head, f"  {'kind':<8}{'files':>8}{'bytes':>14}"]
        for kind, (n, b) in sorted(self.by_kind().items()):
            lines.append(f"  {kind:<8}{n:>8}{format_bytes(b):>14}")
        lines.append(f"  {'total':<8}{len(self.files):>8}{format_bytes(self.total_bytes):>14}  ({self.total_bytes} B)")
        if not sum(self.rows.values()):
            lines.append("  no rows match these filters: nothing to download")
        if self.missing:
            lines.append(f"  {len(self.missing)} file(s) the rows reference are not in the repo, e.g. {self.missing[0]}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DownloadPlan":
        d = json.loads(text)
        d["files"] = [PlannedFile(**f) for f in d["files"]]
        return cls(**d)


def _plans(repo_id: str):
    from ..config import plans_cache_root

    return plans_cache_root() / re.sub(r"[^A-Za-z0-9._-]", "_", repo_id)


def _plan_path(repo_id: str, commit: str, config: str, split: str | None, rf: RowFilter):
    key = json.dumps([repo_id, commit, config, split, rf.as_dict()], sort_keys=True)
    return _plans(repo_id) / f"{commit}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _ref_path(repo_id: str, revision: str | None):
    return _plans(repo_id) / "refs" / hashlib.sha256((revision or "").encode()).hexdigest()[:16]


def _commit(repo_id: str, revision: str | None) -> str:
    """The commit a revision points at: asked of the Hub once per process and remembered beside the plans, so
    that offline work pins to the commit the last online plan used."""
    from ..io.atomic import write_text
    from ..io.hub import is_offline, resolve_revision

    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    ref = _ref_path(repo_id, revision)
    if is_offline():
        if not ref.is_file():
            raise HubAccessError(f"{repo_id}@{revision or 'main'}: offline (HF_HUB_OFFLINE=1) and never planned "
                                 "online: run `radgenome-hf download` online first")
        return ref.read_text(encoding="utf-8").strip()
    commit = resolve_revision(repo_id, revision)
    if commit is None or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise HubAccessError(f"{repo_id}: could not resolve revision {revision or 'main'} to a commit")
    write_text(ref, commit)
    return commit


def _card_data_files(card_path: str, config: str) -> dict[str, list[str]]:
    """{split: [glob patterns]} of a config, from the card's YAML ``configs:``."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    configs = MetadataConfigs.from_dataset_card_data(DatasetCard.load(card_path).data)
    if config not in configs:
        raise RadGenomeError(f"{card_path}: the card declares no config {config!r} (it has {sorted(configs)})")
    data_files = configs[config].get("data_files")
    if isinstance(data_files, (str, list)) and not (isinstance(data_files, list) and data_files
                                                    and isinstance(data_files[0], dict)):
        data_files = [{"split": "train", "path": data_files}]
    out: dict[str, list[str]] = {}
    for entry in data_files or ():
        paths = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        out.setdefault(entry["split"], []).extend(paths)
    return out


def _scan_shard(url: str, split: str, rf: RowFilter) -> tuple[int, set[str], set[str], set[str]]:
    """(matching rows, volume names, volume paths, mask paths) of one row shard."""
    import pyarrow.compute as pc

    from ..io.ranged_parquet import RangedParquet

    f = RangedParquet.open(url)
    names = f.metadata.schema.to_arrow_schema().names
    groups = set(range(f.num_row_groups))
    for column, values in rf.prune(split).items():
        groups &= set(f.row_groups(column, values))
    if not groups:
        return 0, set(), set(), set()
    columns = list(dict.fromkeys(["volume_name", *rf.columns(names), *(c for c in _REFERENCES if c in names)]))
    table = f.read(sorted(groups), columns)
    table = table.filter(rf.mask(table, split))
    volumes, masks = set(), set()
    if "volume" in names:
        volumes = {p for p in pc.struct_field(table["volume"], "path").to_pylist() if p}
    if "mask" in names:
        masks |= {p for p in pc.struct_field(table["mask"], "path").to_pylist() if p}
    if "masks" in names:
        for kind in ("region", "anatomy"):
            masks |= {p for p in pc.struct_field(table["masks"], kind).to_pylist() if p}
    return table.num_rows, set(table["volume_name"].to_pylist()), volumes, masks


def plan_download(
    repo_id: str,
    config: str = "vqa",
    *,
    split: str | None = None,
    revision: str | None = None,
    volumes: Any = None,
    patients: Any = None,
    anatomy: Any = None,
    question_types: Any = None,
) -> DownloadPlan:
    """The files (and bytes) a subset of a packed release on the Hub needs, found without downloading them.

    ``split=None`` plans every split of the config; the filters are those of :class:`RowFilter`. The plan is
    saved per commit and subset (a plan of every split also answers for one of them); offline
    (``HF_HUB_OFFLINE=1``) a saved plan is the answer, or an error says to plan online first.
    """
    from ..io.hub import fetch, file_sizes, hf_url, is_offline, list_files

    rf = RowFilter.make(volumes, patients, anatomy, question_types)
    commit = _commit(repo_id, revision)
    saved = _plan_path(repo_id, commit, config, split, rf)
    if saved.is_file():
        return DownloadPlan.from_json(saved.read_text(encoding="utf-8"))
    every_split = _plan_path(repo_id, commit, config, None, rf)
    if split is not None and every_split.is_file():  # a plan of every split holds this split's
        plan = DownloadPlan.from_json(every_split.read_text(encoding="utf-8"))
        if split in plan.splits:
            return dataclasses.replace(plan, splits=[split], rows={split: plan.rows[split]},
                                       files=[f for f in plan.files if f.split in (None, split)])
    if is_offline():
        raise HubAccessError(f"{repo_id}@{commit[:12]}: offline and no saved plan for {config} {split or 'all splits'} "
                             f"{rf.as_dict() or ''}: run `radgenome-hf download` with these arguments online first")
    from ..io.ranged_parquet import total_bytes_read

    card = fetch(hf_url(repo_id, "README.md", commit))
    planning = os.path.getsize(card) - total_bytes_read()
    patterns = _card_data_files(card, config)
    splits = [split] if split is not None else sorted(patterns)
    if split is not None and split not in patterns:
        raise RadGenomeError(f"{repo_id}: config {config!r} has no split {split!r} (it has {sorted(patterns)})")
    listed: dict[str, int] = {}
    for folder in sorted({p.split("/", 1)[0] for s in splits for p in patterns[s]}):
        listed.update(list_files(repo_id, commit, folder))
    shards = [(s, p) for s in splits for p in sorted(listed) if any(fnmatch.fnmatchcase(p, g) for g in patterns[s])]
    if not shards:
        raise RadGenomeError(f"{repo_id}@{commit[:12]}: no parquet files match {config}'s data_files {patterns}")
    with ThreadPoolExecutor(_THREADS) as pool:
        scans = list(pool.map(lambda sp: _scan_shard(hf_url(repo_id, sp[1], commit), sp[0], rf), shards))
    files = [PlannedFile(p, listed[p], "rows", s) for (s, p), scan in zip(shards, scans) if scan[0]]
    rows = {s: sum(scan[0] for (s2, _), scan in zip(shards, scans) if s2 == s) for s in splits}
    names = sorted(set().union(*(scan[1] for scan in scans)))
    vol_paths = sorted(set().union(*(scan[2] for scan in scans)))
    mask_paths = sorted(set().union(*(scan[3] for scan in scans)))
    planning += total_bytes_read()
    sizes = file_sizes(repo_id, commit, vol_paths + mask_paths) if vol_paths or mask_paths else {}
    missing = [p for p in vol_paths + mask_paths if p not in sizes]
    for p in vol_paths:
        if p in sizes and sizes[p] is None:  # a folder (a .zarr store): every file under it
            files += [PlannedFile(q, n, "volume") for q, n in sorted(list_files(repo_id, commit, p).items())]
        elif sizes.get(p) is not None:
            files.append(PlannedFile(p, sizes[p], "volume"))  # type: ignore[arg-type]
    files += [PlannedFile(p, sizes[p], "masks") for p in mask_paths if sizes.get(p) is not None]  # type: ignore[misc]
    plan = DownloadPlan(repo_id, commit, config, splits, rf.as_dict(), files, rows, names, missing, planning)
    from ..io.atomic import write_text

    write_text(saved, plan.to_json())
    return plan


@dataclass
class DownloadReport:
    plan: DownloadPlan
    fetched_files: int = 0
    fetched_bytes: int = 0  # sizes of the files fetched now
    cached_files: int = 0  # already in the Hugging Face cache: not fetched again
    cached_bytes: int = 0

    def __str__(self) -> str:
        from ..access._format import format_bytes

        return (f"fetched {self.fetched_files} files ({format_bytes(self.fetched_bytes)}); "
                f"{self.cached_files} already cached ({format_bytes(self.cached_bytes)})")


def download(
    repo_id: str,
    config: str = "vqa",
    *,
    dry_run: bool = False,
    progress: bool = True,
    plan: DownloadPlan | None = None,
    **subset: Any,
) -> DownloadReport:
    """Fetch exactly the files of a subset into the Hugging Face cache: ``subset`` is :func:`plan_download`'s
    keywords (``split``, ``revision``, ``volumes``, ``patients``, ``anatomy``, ``question_types``), or pass the
    ``plan`` it made.

    Files already cached are skipped; a dropped connection resumes by ``Range`` (from huggingface_hub's last
    whole 10 MiB chunk); the bar counts bytes with an ETA. ``dry_run=True`` plans and moves nothing else.
    Afterwards ``load_packed(repo_id, config, volumes=…)`` with the same subset works offline. Example::

        radgenome_hf.download("org/radgenome-chestct", "vqa", split="train", volumes=["train_1_a_1"])
    """
    from tqdm.auto import tqdm

    from ..io.hub import cached_file, fetch, hf_url

    if plan is None:
        plan = plan_download(repo_id, config, **subset)
    report = DownloadReport(plan)
    todo = []
    for f in plan.files:
        if cached_file(hf_url(plan.repo_id, f.path, plan.revision)) is not None:
            report.cached_files += 1
            report.cached_bytes += f.size
        else:
            todo.append(f)
    if dry_run or not todo:
        return report
    bar = tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"download {plan.repo_id}", disable=not progress)
    lock = threading.Lock()

    class _Into:
        """huggingface_hub's per-file progress hook, summed into the one bar (a resumed transfer rolls back)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("initial"):
                self.update(kwargs["initial"])

        def __enter__(self) -> "_Into":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def close(self) -> None:
            pass

        def update(self, n: float | None = 1) -> None:
            with lock:
                bar.update(n or 0)

    def one(f: PlannedFile) -> None:
        fetch(hf_url(plan.repo_id, f.path, plan.revision), tqdm_class=_Into)
        with lock:
            report.fetched_files += 1
            report.fetched_bytes += f.size

    try:
        with ThreadPoolExecutor(_THREADS) as pool:
            for _ in pool.map(one, todo):  # the first failure propagates; finished files stay cached
                pass
    finally:
        bar.close()
    return report
