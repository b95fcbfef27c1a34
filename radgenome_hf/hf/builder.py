"""The ``radgenome`` datasets builder: one builder, one config per view of the data.

| config | one row is |
| --- | --- |
| ``reports`` | one CT-RATE volume with its report, 18 labels and metadata |
| ``segmentation`` | one volume with its structures (packed masks, decoded on demand) |
| ``grounded_reports`` | one (volume, anatomy path) sentence group with its grounding mask |
| ``vqa`` | one question–answer pair (abnormality, location, presence, size, disorders) with its grounding mask |
| ``scene_graph`` | one volume as an anatomy-centred graph (from a release that contains the generated files) |
| ``anatomy_pairs`` | one (volume, organ) image–text pair (likewise) |

The builder reads an upstream release as it is (see :mod:`radgenome_hf.io.release`): CSVs with pyarrow at prepare
time, masks packed in one pass (:mod:`radgenome_hf.access.maskstore`), volumes referenced by path and decoded lazily.

>>> import tempfile, datasets, radgenome_hf
>>> from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
>>> rel = write_release(tempfile.mkdtemp(), SyntheticConfig(n_train_patients=1, n_valid_patients=0, shape=(32, 32, 24)),
...                     progress=False)
>>> ds = datasets.load_dataset("radgenome", "grounded_reports", data_dir=str(rel.root), split="train")
>>> ds[0]["volume"]
Volume(name='train_1_a_1', shape=(32, 32, 24), spacing=(...), orientation='LPS', dtype=int16, memory=48.0 KiB, loaded=False)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._version import __version__
from ..errors import CacheWriteError, MalformedFileError, MissingVolumeError, RadGenomeError, ShapeMismatchError
from .features import VolumeFeature, LazyMaskFeature, MaskSetFeature, register_features
from .schema import CONFIG_NAMES, QUALITY_FEATURES, VQA_TYPES, _DESCRIPTIONS, config_features, quality_arrow_type
from ..names import HF_SPLIT, Split, VolumeName
from ..ontology import get_ontology
from ..io.release import UpstreamRelease
from ..io.tables import CTRATE_LABELS

register_features()

SPLITS: tuple[Split, ...] = ("train", "valid")


@dataclass
class RadGenomeConfig(datasets.BuilderConfig):
    """Configuration of the ``radgenome`` builder.

    Attributes:
        radgenome_dir: the RadGenome-ChestCT root, if not found inside ``data_dir``.
        ctrate_dir: the CT-RATE root (reports, labels, metadata), if not found inside ``data_dir``.
        token: Hugging Face token for ``hf://`` sources (CT-RATE is gated); defaults to ``HF_TOKEN``/login.
        ignore_missing_volumes: give ``volume=None`` for rows whose volume file is absent instead of failing.
        num_shards: shards per split (each a contiguous block of rows; what streaming workers and nodes split).
            ``None``: 8, or 64 above 100,000 rows, never more than the rows.
        mask_cache_dir: where packed masks go (default ``$RADGENOME_CACHE`` or ``~/.cache/radgenome_hf``).
        question_templates: ``"auto"`` (upstream ``qa_templates/`` when the release ships them, else this package's
            templates) or ``"radgenome_hf"``.
        progress: show progress bars while preparing.
        drop_flagged: leave out the rows of volumes the quality stage flagged (non-finite voxels, a rescale applied
            twice, no lung: not a chest scan, bad spacing); every row carries its volume's ``quality`` either way.
        volume_cache: where decoded volumes are kept so that later rows, epochs and crops read only what they
            need: ``"default"`` (``$RADGENOME_CACHE``, bounded by ``$RADGENOME_CACHE_MAX_BYTES``), a folder, or
            ``False`` (off: every row decodes its file, apart from the per-process LRU of open volumes).
            ``None`` means the default: ``load_dataset`` drops config arguments that are ``None``.
    """

    radgenome_dir: str | None = None
    ctrate_dir: str | None = None
    token: str | bool | None = None
    ignore_missing_volumes: bool = False
    num_shards: int | None = None
    mask_cache_dir: str | None = None
    question_templates: str = "auto"
    progress: bool = True
    drop_flagged: bool = False
    volume_cache: str | bool | None = "default"

    def __post_init__(self):
        super().__post_init__()
        if self.name not in CONFIG_NAMES:
            raise ValueError(f"BuilderConfig {self.name!r} not found. Available: {list(CONFIG_NAMES)}")


@functools.lru_cache(maxsize=1)
def builder_source_hash() -> str:
    """Hash of the package code and data that make rows (everything but the CLI, training, publishing, testing).

    The builder's cache folder is keyed by it, as datasets keys a loading script's cache by the script's hash.
    """
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*")):
        rel = p.relative_to(pkg).as_posix()
        if not p.is_file() or p.suffix not in (".py", ".json", ".md") or rel.split("/")[0] in _NOT_IN_ROWS:
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_NOT_IN_ROWS = frozenset({"cli", "training", "publish", "testing", "viz.py", "demo.py", "__pycache__"})


class RadGenome(datasets.ArrowBasedBuilder):
    """RadGenome-Chest CT (with CT-RATE reports) as datasets configs; see the module docstring."""

    VERSION = datasets.Version(__version__)
    BUILDER_CONFIG_CLASS = RadGenomeConfig
    BUILDER_CONFIGS = [RadGenomeConfig(name=n, version=datasets.Version(__version__), description=_DESCRIPTIONS[n])
                       for n in CONFIG_NAMES]
    DEFAULT_CONFIG_NAME = "vqa"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("dataset_name", "radgenome")
        kwargs["hash"] = builder_source_hash()  # an edited builder never serves Arrow files of the old one
        super().__init__(*args, **kwargs)

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        """datasets' config id plus the release's fingerprint: rows are re-prepared whenever a source changes."""
        builder_config, config_id = super()._create_builder_config(
            config_name=config_name, custom_features=custom_features, config_id=config_id, **config_kwargs
        )
        from ..access.maskstore import cache_token

        try:
            fingerprint = self._release_of(builder_config).fingerprint()
        except RadGenomeError:  # no release here: preparing will raise the error that says what to do
            return builder_config, config_id
        # the mask cache's token too: rows point at packs there, and a deleted cache must be packed again
        return builder_config, f"{config_id}-{fingerprint}{cache_token(builder_config.mask_cache_dir)[:8]}"

    def _info(self) -> datasets.DatasetInfo:
        features = config_features(self.config.name)
        for feature in features.values():
            if isinstance(feature, VolumeFeature):
                c = self.config.volume_cache
                feature.cache = "none" if c is False else ("default" if c in (None, True) else str(c))
        return datasets.DatasetInfo(
            description=_DESCRIPTIONS[self.config.name],
            features=features,
            homepage="https://huggingface.co/datasets/RadGenome/RadGenome-ChestCT",
            license="cc-by-4.0 (RadGenome annotations); cc-by-nc-sa-4.0 (CT-RATE volumes and reports)",
        )

    # -- split generation ------------------------------------------------------------------------------
    @staticmethod
    def _release_of(config: RadGenomeConfig) -> UpstreamRelease:
        return UpstreamRelease.discover(
            config.data_dir,
            radgenome_dir=config.radgenome_dir,
            ctrate_dir=config.ctrate_dir,
            token=config.token,
            need="ctrate" if config.name == "reports" else "radgenome",
        )

    def _release(self) -> UpstreamRelease:
        return self._release_of(self.config)

    def _split_generators(self, dl_manager):
        release = self._release()
        make = getattr(self, f"_table_{self.config.name}", None)
        out = []
        for split in SPLITS:
            if self.config.name == "vqa":  # streamed: the rows are made a block at a time in _generate_tables
                gen_kwargs = self._vqa_shards(release, split)
                if gen_kwargs is not None:
                    out.append(datasets.SplitGenerator(name=HF_SPLIT[split], gen_kwargs=gen_kwargs))
                continue
            table = make(release, split)
            if table is None:
                continue
            table = self._with_quality(release, split, table)
            if table.num_rows == 0 and self.config.drop_flagged:  # every volume of the split flagged: no split
                continue
            table = _cast(table, self.info.features)
            out.append(datasets.SplitGenerator(name=HF_SPLIT[split], gen_kwargs={"tables": _shards(table, self.config.num_shards)}))
        if not out:
            raise MalformedFileError(
                self.config.data_dir,
                f"the release has none of the files the {self.config.name!r} config needs for train or validation "
                f"(see docs/architecture.md 'Releases on disk')",
            )
        return out

    def _quality_rows(self, release: UpstreamRelease, split: Split) -> dict[str, dict]:
        """The quality rows of a split by volume (``dataset/quality/<split>.jsonl`` of a rebuilt release; empty
        without it), read once per split: the streamed ``vqa`` prepare joins them block by block."""
        memo = self.__dict__.setdefault("_quality_memo", {})
        if split in memo:
            return memo[split]
        path = release.generated_rows("quality", split)
        found: dict[str, dict] = {}
        if path is not None and release.exists(path):
            with release.open(path) as f:
                for line in f:
                    if line.strip():
                        r = json.loads(line)
                        found[r["volume_name"]] = {k: r.get(k) for k in QUALITY_FEATURES}
                        if self.config.name != "reports":
                            found[r["volume_name"]]["label_checks"] = None
        memo[split] = found
        return found

    def _with_quality(self, release: UpstreamRelease, split: Split, table: pa.Table) -> pa.Table:
        """Join each row's volume quality (null without quality rows) and, with ``drop_flagged``, drop the rows of
        flagged volumes. ``label_checks`` (the report's CT-RATE labels against its text) is kept for ``reports``
        rows only."""
        found = self._quality_rows(release, split)
        names = table.column("volume_name").combine_chunks()
        unique = pc.unique(names)
        per_volume = [found.get(n) for n in unique.to_pylist()]
        index = pc.index_in(names, value_set=unique)
        quality = pa.array(per_volume, type=quality_arrow_type()).take(index)
        table = table.append_column("quality", quality)
        if self.config.drop_flagged:
            flagged = pa.array([bool(q and q.get("flags")) for q in per_volume], type=pa.bool_()).take(index)
            table = table.filter(pc.invert(flagged))
        return table

    def _generate_tables(self, tables: list[pa.Table] | None = None, vqa_shards: list[list[tuple]] | None = None,
                         split: Split | None = None, stores: dict | None = None,
                         templates=None) -> Iterator[tuple[object, pa.Table]]:
        from datasets.builder import Key

        if vqa_shards is not None:
            yield from self._generate_vqa(vqa_shards, split, stores, templates)
            return
        for i, t in enumerate(tables):
            yield Key(i, 0), t

    def _download_and_prepare(self, dl_manager, verification_mode, **kwargs):
        """datasets' own, with a full disk (or a lost permission) named as such instead of "An error occurred
        while generating the dataset"."""
        try:
            return super()._download_and_prepare(dl_manager, verification_mode, **kwargs)
        except datasets.exceptions.DatasetGenerationError as exc:
            cause = exc.__cause__
            if isinstance(cause, RadGenomeError):  # a streamed config's typed error (a bad CSV cell, a missing
                raise cause from None               # volume) says what to do: not datasets' generic wrapper
            if not isinstance(cause, OSError):
                raise
            err = CacheWriteError(f"{self.cache_dir}: writing the prepared rows failed ({cause.strerror or cause}"
                                  f"{': ' + str(cause.filename) if cause.filename else ''}); free space there, or "
                                  "pass cache_dir= on another disk, and load again")
            err.errno = cause.errno
            raise err from exc

    # -- shared pieces ---------------------------------------------------------------------------------
    def _read(self, release: UpstreamRelease, path: str, reader):
        with release.open(path) as f:
            try:
                return reader(f)
            except MalformedFileError as exc:
                if exc.path is None or exc.path.startswith("<"):
                    raise MalformedFileError(path, str(exc), row=exc.row, column=exc.column) from exc
                raise

    def _masks(self, release: UpstreamRelease, split: Split) -> dict:
        from ..access.maskstore import prepare_mask_stores

        return prepare_mask_stores(
            release, split, cache_root=self.config.mask_cache_dir, progress=self.config.progress
        )

    def _volume_refs(self, release: UpstreamRelease, split: Split, stems: list[str], stores: dict) -> list[dict | None]:
        """One VolumeFeature reference per stem (None where absent and allowed); checks mask grids against volumes."""
        has_tree = release.has_volume_tree(split)
        refs: list[dict | None] = []
        missing = []
        for stem in stems:
            path = release.radgenome_volume(stem)
            if not has_tree:
                refs.append(None)
                continue
            if path is not None and "://" not in path and not os.path.exists(path):
                missing.append(path)
                refs.append(None)
                continue
            refs.append({"path": path, "name": stem, "spacing": None, "rescale": None})
            if path is not None and "://" not in path:
                _check_mask_grid(path, stem, stores)
        if missing and not self.config.ignore_missing_volumes:
            raise MissingVolumeError(
                f"{len(missing)} volume file(s) referenced by the CSVs are missing, e.g. {missing[0]}. Download them, "
                "or pass ignore_missing_volumes=True to load those rows with volume=None."
            )
        return refs

    @staticmethod
    def _mask_names(stores: dict, stem: str) -> tuple[tuple, tuple]:
        """(anatomy mask names, region mask names) of a volume."""
        region, anatomy = stores.get("region"), stores.get("anatomy")
        return (tuple(anatomy.names(stem)) if anatomy is not None and stem in anatomy else (),
                tuple(region.names(stem)) if region is not None and stem in region else ())

    def _grounding(self, stores: dict, stem: str, path: str, shape, names: tuple | None = None) -> dict:
        """The grounding-mask reference of (volume, anatomy path), by the official fallback rule (``names``: the
        volume's :meth:`_mask_names`, when the caller has them)."""
        region, anatomy = stores.get("region"), stores.get("anatomy")
        source, name = _ground_rule(path, *(names if names is not None else self._mask_names(stores, stem)))
        if source == "anatomy":
            return {"path": anatomy.path(stem), "structure": name, "source": source, "shape": shape}
        if source == "region":
            return {"path": region.path(stem), "structure": name, "source": source, "shape": shape}
        return {"path": None, "structure": None, "source": "whole", "shape": shape}

    def _shape_of(self, stores: dict, stem: str):
        for store in stores.values():
            s = store.shape(stem)
            if s is not None:
                return list(s)
        return None

    # -- configs ---------------------------------------------------------------------------------------
    def _vqa_shards(self, release: UpstreamRelease, split: Split) -> dict | None:
        """The gen_kwargs of a ``vqa`` split: its five CSVs, in question-type order, cut into ``num_shards``
        contiguous blocks of rows at byte offsets (:func:`~radgenome_hf.io.tables.csv_row_starts`: no parsing), plus
        the mask stores and question templates that make the rows. ``None`` when the split has none of the files."""
        from ..io.tables import csv_line_count, csv_row_starts
        from ..templates import QuestionTemplates

        files = [(qtype, release.radgenome_csv(split, _VQA_TABLE[qtype])) for qtype in VQA_TYPES]
        files = [(qtype, path) for qtype, path in files if path is not None]
        if not files:
            return None
        upstream = release.qa_template_files() if self.config.question_templates == "auto" else {}
        templates = QuestionTemplates.from_upstream(upstream, "upstream") if upstream else QuestionTemplates.default()
        stores = self._masks(release, split)
        from ..io.hub import local_path

        local = [(qtype, local_path(path, {_repo_of(path): release.token}) if _repo_of(path) else path, path)
                 for qtype, path in files]  # a Hub CSV is fetched once into the HF cache, then cut like a local one
        sizes = [os.path.getsize(p) for _, p, _ in local]
        rows = sum(max(csv_line_count(p) - 1, 0) for _, p, _ in local)  # line ends: an estimate, enough here
        n = self.config.num_shards if self.config.num_shards is not None else (8 if rows <= 100_000 else 64)
        n = max(1, min(n, rows))
        total, offsets = sum(sizes), [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        # cut k at byte k * total / n of the files laid end to end, moved to the next row start; rows stay in order
        cuts: list[list[int]] = [[] for _ in local]
        for k in range(1, n):
            g = k * total // n
            i = next(i for i in range(len(local)) if g < offsets[i + 1])
            cuts[i].append(g - offsets[i])
        bounds, data = [0], []
        for i, (_, path, _) in enumerate(local):
            starts = csv_row_starts(path, [1, *cuts[i]])
            data.append((offsets[i] + starts[0], offsets[i + 1]))  # the file's rows, after its header
            bounds += [offsets[i] + s for s in starts[1:]]
        bounds = sorted(set(bounds + [total]))
        shards = []
        for lo, hi in zip(bounds, bounds[1:]):
            pieces = []
            for i, (qtype, path, label) in enumerate(local):
                a, b = max(lo, data[i][0]), min(hi, data[i][1])
                if a < b:
                    pieces.append((qtype, path, label, a - offsets[i], b - offsets[i]))
            if pieces:
                shards.append(pieces)
        if self.config.drop_flagged and not self._keeps_a_row(release, split, local):
            return None  # every volume of the split flagged: no split (as for the other configs)
        return {"vqa_shards": shards, "split": split, "stores": stores, "templates": templates}

    def _keeps_a_row(self, release: UpstreamRelease, split: Split, local: list[tuple[str, str, str]]) -> bool:
        """Whether ``drop_flagged`` leaves any row of these CSVs: streamed until the first volume it keeps (at
        once, unless nearly every volume is flagged)."""
        from ..io.tables import iter_radgenome_table

        for qtype, path, label in local:
            for t in iter_radgenome_table(path, _VQA_TABLE[qtype], label=label):
                names = pa.table({"volume_name": pc.unique(t.column("volume_name"))})
                if self._with_quality(release, split, names).num_rows:
                    return True
        return False

    def _generate_vqa(self, shards: list[list[tuple]], split: Split, stores: dict, templates) -> Iterator:
        """The rows of ``vqa`` shards, one block of CSV rows (a few MB) at a time: all 1.3M rows are never held."""
        from datasets.builder import Key

        from ..io.tables import iter_radgenome_table

        release = self._release()
        refs: dict[str, dict | None] = {}  # volume references by stem, across blocks (one check per volume)
        for shard, pieces in enumerate(shards):
            block = 0
            for qtype, path, label, start, stop in pieces:
                for t in iter_radgenome_table(path, _VQA_TABLE[qtype], start=start, stop=stop, label=label):
                    table = self._attach_volume_and_mask(release, split, _vqa_rows(qtype, t, templates), stores,
                                                         refs=refs)
                    table = self._with_quality(release, split, table)
                    if table.num_rows:
                        yield Key(shard, block), _cast(table, self.info.features)
                        block += 1

    def _attach_volume_and_mask(self, release, split, table: pa.Table, stores: dict, with_mask: bool = True,
                                refs: dict | None = None) -> pa.Table:
        """Add ids, the volume reference and (optionally) the grounding mask: computed once per unique volume /
        (volume, anatomy) pair and spread with ``take`` (1.3M VQA rows have ~100x fewer unique pairs). ``refs``:
        volume references already made (by stem), reused and extended, for tables that come a block at a time."""
        stems_col = table.column("volume_name")
        unique = pc.unique(stems_col).to_pylist()
        known = {} if refs is None else refs
        new = [s for s in unique if s not in known]
        known.update(zip(new, self._volume_refs(release, split, new, stores)))
        refs_arr = pa.array([known[s] for s in unique], type=VolumeFeature.pa_type)
        table = _add_ids(table)
        table = table.append_column("volume", refs_arr.take(pc.index_in(stems_col, value_set=pa.array(unique))))
        if with_mask:
            keys = pc.binary_join_element_wise(stems_col, table.column("anatomy"), "\x1f")
            encoded = keys.combine_chunks().dictionary_encode() if isinstance(keys, pa.ChunkedArray) else keys.dictionary_encode()
            masks, per_stem = [], {}
            for key in encoded.dictionary.to_pylist():
                stem, anatomy = key.split("\x1f", 1)
                got = per_stem.get(stem)
                if got is None:  # a volume's mask names and grid, once for all its anatomies
                    got = per_stem[stem] = (self._shape_of(stores, stem), self._mask_names(stores, stem))
                masks.append(self._grounding(stores, stem, anatomy, got[0], got[1]))
            table = table.append_column("mask", pa.array(masks, type=LazyMaskFeature.pa_type).take(encoded.indices))
        return table

    def _table_grounded_reports(self, release: UpstreamRelease, split: Split) -> pa.Table | None:
        from ..io.tables import read_region_report

        path = release.radgenome_csv(split, "region_report")
        if path is None:
            return None
        t = self._read(release, path, read_region_report)
        anatomy = t.column("anatomy").combine_chunks()
        table = pa.table(
            {
                "volume_name": t.column("volume_name"),
                "anatomy": anatomy,
                "depth": _map_unique(anatomy, lambda a: a.count("/") + 1 if a else 0, pa.int8()),
                "region": _map_unique(anatomy, lambda a: a.split("/", 1)[0] if a else "", pa.string()),
                "node": _map_unique(anatomy, lambda a: a.rsplit("/", 1)[-1] if a else "", pa.string()),
                "sentence": t.column("sentence"),
            }
        )
        return self._attach_volume_and_mask(release, split, table, self._masks(release, split))

    def _table_segmentation(self, release: UpstreamRelease, split: Split) -> pa.Table | None:
        stores = self._masks(release, split)
        for store in stores.values():  # the structures column needs every bbox: pack what is not, on all cores
            store.pack_all(progress=self.config.progress)
        stems: list[str] = sorted(
            {s for store in stores.values() for s in store.index}, key=lambda s: VolumeName.parse(s)
        )
        if not stems:
            # no masks: volumes alone, if there are any
            return None
        onto = get_ontology()
        from ..access.lazymasks import open_packed_masks

        rows_structures, rows_masks, shapes = [], [], []
        for stem in stems:
            structures = []
            for kind in ("region", "anatomy"):
                store = stores.get(kind)
                if store is None or stem not in store:
                    continue
                packed = open_packed_masks(store.path(stem))
                for name in packed.names:
                    paths = onto.paths_ending_in(name) if kind == "anatomy" else ((name,) if name in onto else ())
                    bbox = packed.bbox(name)
                    structures.append(
                        {
                            "name": name,
                            "source": kind,
                            "anatomy_path": paths[0] if paths else "",
                            "bbox": list(bbox) if bbox is not None else None,
                            "voxel_count": int(packed.voxel_count(name)),
                        }
                    )
            rows_structures.append(structures)
            rows_masks.append({kind: (stores[kind].path(stem) if kind in stores and stem in stores[kind] else None)
                               for kind in ("region", "anatomy")})
            shapes.append(self._shape_of(stores, stem))
        table = pa.table({"volume_name": stems})
        table = self._attach_volume_and_mask(release, split, table, stores, with_mask=False)
        table = table.append_column("masks", pa.array(rows_masks, type=MaskSetFeature.pa_type))
        table = table.append_column("shape", pa.array(shapes, type=pa.list_(pa.int32())))
        table = table.append_column("structures", pa.array(rows_structures))
        return table

    def _table_reports(self, release: UpstreamRelease, split: Split) -> pa.Table | None:
        from ..io.tables import read_ctrate_labels, read_ctrate_metadata, read_ctrate_reports

        path = release.ctrate_reports(split)
        if path is None:
            return None
        reports = self._read(release, path, read_ctrate_reports)
        stems = reports.column("volume_name").to_pylist()
        n = len(stems)
        labels_by_stem: dict[str, dict] = {}
        lpath = release.ctrate_labels(split)
        if lpath is not None:
            lt = self._read(release, lpath, read_ctrate_labels)
            for row in lt.to_pylist():
                labels_by_stem[row.pop("volume_name")] = row
        meta_by_stem: dict[str, dict] = {}
        mpath = release.ctrate_metadata(split)
        if mpath is not None:
            mt = self._read(release, mpath, read_ctrate_metadata)
            for row in mt.to_pylist():
                meta_by_stem[row["volume_name"]] = row
        volumes, spacings, fixed_flags = [], [], []
        has_tree = release.has_volume_tree(split, "ctrate")
        missing = []
        for stem in stems:
            meta = meta_by_stem.get(stem, {})
            path_v, fixed = release.ctrate_volume(stem)
            spacing = _metadata_spacing(meta)
            spacings.append(spacing)
            fixed_flags.append(fixed)
            if not has_tree:
                volumes.append(None)
                continue
            if path_v is not None and "://" not in path_v and not os.path.exists(path_v):
                missing.append(path_v)
                volumes.append(None)
                continue
            if fixed:
                volumes.append({"path": path_v, "name": stem, "spacing": None, "rescale": None})
            else:  # v1: blank header; spacing and rescale come from the metadata CSV
                slope, inter = meta.get("rescale_slope"), meta.get("rescale_intercept")
                volumes.append({
                    "path": path_v, "name": stem, "spacing": spacing,
                    "rescale": [float(slope), float(inter)] if slope is not None and inter is not None else None,
                })
        if missing and not self.config.ignore_missing_volumes:
            raise MissingVolumeError(
                f"{len(missing)} CT-RATE volume file(s) are missing, e.g. {missing[0]}. Download them, or pass "
                "ignore_missing_volumes=True to load those rows with volume=None."
            )
        empty_labels = {label: None for label in CTRATE_LABELS}
        table = pa.table(
            {
                "volume_name": stems,
                "volume": pa.array(volumes, type=VolumeFeature.pa_type),
                "clinical_information": reports.column("clinical_information"),
                "technique": reports.column("technique"),
                "findings": reports.column("findings"),
                "impressions": reports.column("impressions"),
                "labels": [labels_by_stem.get(s, empty_labels) for s in stems],
                "spacing": pa.array(spacings, type=pa.list_(pa.float32())),
                "fixed_header": fixed_flags,
                "manufacturer": [meta_by_stem.get(s, {}).get("manufacturer") for s in stems],
                "patient_sex": [meta_by_stem.get(s, {}).get("patient_sex") for s in stems],
                "patient_age": pa.array([meta_by_stem.get(s, {}).get("patient_age") for s in stems], pa.float32()),
                "study_date": [_str_or_none(meta_by_stem.get(s, {}).get("study_date")) for s in stems],
            }
        )
        assert table.num_rows == n
        return _add_ids(table)

    def _generated(self, release: UpstreamRelease, split: Split, kind: str) -> pa.Table | None:
        """Rows written by the generation module (``dataset/<kind>/<split>.jsonl``)."""
        path = release.generated_rows(kind, split)
        if path is None or not release.exists(path):
            return None
        with release.open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if not rows:
            return None
        stores = self._masks(release, split)
        stems = [r["volume_name"] for r in rows]
        feats = self.info.features
        cols = {k: [r.get(k) for r in rows] for k in feats if k not in ("volume", "mask", "patient_id", "scan_id",
                                                                        "reconstruction_id", "quality")}
        table = pa.table(cols)
        table = _add_ids(table)
        unique = list(dict.fromkeys(stems))
        refs = dict(zip(unique, self._volume_refs(release, split, unique, stores)))
        table = table.append_column("volume", pa.array([refs[s] for s in stems], type=VolumeFeature.pa_type))
        if "mask" in feats:
            paths = [r.get("anatomy_path") or "" for r in rows]
            table = table.append_column(
                "mask",
                pa.array([self._grounding(stores, s, p, self._shape_of(stores, s)) for s, p in zip(stems, paths)],
                         type=LazyMaskFeature.pa_type),
            )
        return table

    def _table_scene_graph(self, release: UpstreamRelease, split: Split) -> pa.Table | None:
        return self._generated(release, split, "scene_graph")

    def _table_anatomy_pairs(self, release: UpstreamRelease, split: Split) -> pa.Table | None:
        return self._generated(release, split, "anatomy_pairs")


# -- helpers ---------------------------------------------------------------------------------------------
def _add_ids(table: pa.Table) -> pa.Table:
    """Insert patient_id, scan_id, reconstruction_id after volume_name (vectorised)."""
    stems = table.column("volume_name")
    parts = pc.split_pattern(stems, "_")
    split_ = pc.list_element(parts, 0)
    patient = pc.list_element(parts, 1)
    scan = pc.list_element(parts, 2)
    recon = pc.cast(pc.list_element(parts, 3), pa.int32())
    patient_id = pc.binary_join_element_wise(split_, patient, "_")
    scan_id = pc.binary_join_element_wise(split_, patient, scan, "_")
    table = table.add_column(1, "patient_id", patient_id)
    table = table.add_column(2, "scan_id", scan_id)
    table = table.add_column(3, "reconstruction_id", recon)
    return table


@functools.lru_cache(maxsize=65536)
def _ground_rule(path: str, anatomy_names: tuple, region_names: tuple) -> tuple[str, str | None]:
    # most volumes share the same mask-name sets, so this cache turns ~1M lookups into a few thousand
    return get_ontology().grounding_mask(path, available_anatomy=anatomy_names, available_regions=region_names)


_RENDER_ROWS = 131_072


def _flat(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _render_questions(templates, qtype: str, stems: pa.Array, anatomy: pa.Array, region: pa.Array,
                      finding: pa.Array) -> pa.Array:
    """The questions of a slice of rows, exactly as ``templates.render(qtype, key="<stem>|<anatomy>|<finding>",
    region=…, abnormality=…)`` gives them, column-wise: the phrasing of each row is chosen by the templates' rule
    (crc32 of ``"<qtype>|<key>"`` modulo the phrasings), then each phrasing is filled for all of its rows at once
    with ``pyarrow.compute`` (a Python ``str.format`` per row cost ~4 s of the 1.3M-row prepare). A phrasing that is
    not plain ``{region}``/``{abnormality}`` fields (a format spec, another field) is rendered row by row."""
    options = templates.templates[qtype]
    filled = [_fill(t, region, finding, len(stems)) for t in options]
    if any(f is None for f in filled) or any(c.null_count for c in (stems, anatomy, region, finding)):
        render = templates.render
        return pa.array(
            [render(qtype, key=f"{s}|{a}|{fi}", region=r, abnormality=fi or "")
             for s, a, r, fi in zip(stems.to_pylist(), anatomy.to_pylist(), region.to_pylist(), finding.to_pylist())],
            pa.string(),
        )
    if len(options) == 1:
        return filled[0]
    keys = pc.binary_join_element_wise(pa.scalar(qtype), stems, anatomy, finding, "|").cast(pa.binary())
    crc = zlib.crc32
    which = np.fromiter((crc(k) for k in keys.to_pylist()), np.uint32, len(stems)) % len(options)
    return pc.choose(pa.array(which.astype(np.int32)), *filled)


def _fill(template: str, region: pa.Array, abnormality: pa.Array, n: int) -> pa.Array | None:
    """``template.format(region=…, abnormality=…)`` for every row, or ``None`` when the template is more than plain
    fields (then the caller renders row by row, which raises what ``str.format`` raises)."""
    import string

    columns = {"region": region, "abnormality": abnormality}
    parts: list = []
    try:
        for literal, field, spec, conversion in string.Formatter().parse(template):
            if literal:
                parts.append(pa.scalar(literal))
            if field is not None:
                if spec or conversion or field not in columns:
                    return None
                parts.append(columns[field])
    except ValueError:  # unbalanced braces: str.format's own error, row by row
        return None
    if not any(isinstance(x, (pa.Array, pa.ChunkedArray)) for x in parts):
        return pa.repeat(pa.scalar("".join(x.as_py() for x in parts), pa.string()), n)
    return pc.binary_join_element_wise(*parts, "")


#: question type -> the RadGenome table its rows come from
_VQA_TABLE = {"abnormality": "vqa_abnormality", "location": "vqa_location", "presence": "vqa_presence",
              "size": "vqa_size", "disorders": "case_disorders"}


def _repo_of(path: str) -> str | None:
    """The repo id of an ``hf://`` URL (``None`` for a local path)."""
    from ..io.hub import parse_hf_url

    return parse_hf_url(path).repo_id if path.startswith("hf://") else None


def _vqa_rows(qtype: str, t: pa.Table, templates) -> pa.Table:
    """``vqa`` rows of one question type from a block of its CSV (as :mod:`radgenome_hf.io.tables` reads it), before
    the ids, volume and mask columns."""
    if qtype == "disorders":
        anatomy = pa.repeat(pa.scalar("", pa.string()), t.num_rows)
        finding = answer = t.column("disorders")
    else:
        anatomy = t.column("anatomy")
        if qtype == "presence":
            finding, answer = t.column("finding"), t.column("presence")
        elif qtype == "size":
            finding, answer = t.column("abnormality"), t.column("size")
        elif qtype == "location":
            finding, answer = t.column("abnormality"), anatomy
        else:
            finding = answer = t.column("abnormality")
    anatomy, finding = _flat(anatomy), _flat(finding)
    region_names = _map_unique(anatomy, _leaf_or_scan, pa.string())
    # rendered a slice at a time: Python strings for many rows at once cost ~0.4 KB each of peak memory
    stems_col = _flat(t.column("volume_name"))
    questions = pa.chunked_array(
        [_render_questions(templates, qtype, *(c.slice(o, _RENDER_ROWS) for c in
                                                (stems_col, anatomy, region_names, finding)))
         for o in range(0, t.num_rows, _RENDER_ROWS)],
        pa.string(),
    )
    return pa.table(
        {
            "volume_name": t.column("volume_name"),
            "question_type": pa.repeat(pa.scalar(qtype), t.num_rows),
            "question": questions,
            "answer": answer,
            "anatomy": anatomy,
            "region": region_names,
            "finding": finding,
            "manually_verified": pa.nulls(t.num_rows, pa.bool_()),
        }
    )


def _leaf_or_scan(path: str | None) -> str:
    return path.rsplit("/", 1)[-1] if path else "scan"


def _map_unique(column: pa.Array, fn, type_: pa.DataType) -> pa.Array:
    """Apply a Python function once per distinct value of a column (vectorised spread with ``take``)."""
    encoded = column.dictionary_encode()
    values = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], type=type_)
    return values.take(encoded.indices)


def _cast(table: pa.Table, features: datasets.Features) -> pa.Table:
    from datasets.table import table_cast

    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise ValueError(f"internal: columns {missing} not produced")
    return table_cast(table.select(list(features)), features.arrow_schema)


def _shards(table: pa.Table, num_shards: int | None) -> list[pa.Table]:
    n = table.num_rows
    if num_shards is None:
        num_shards = 8 if n <= 100_000 else 64
    num_shards = max(1, min(num_shards, n))
    size = math.ceil(n / num_shards) if n else 0
    return [table.slice(i * size, size) for i in range(num_shards) if i * size < n] or [table]


def _metadata_spacing(meta: dict) -> list[float] | None:
    xy, z = meta.get("xy_spacing"), meta.get("z_spacing")
    if not xy or z is None:
        return None
    return [float(xy[0]), float(xy[1] if len(xy) > 1 else xy[0]), float(z)]


def _str_or_none(v) -> str | None:
    return None if v is None else str(v)


def _check_mask_grid(volume_path: str, stem: str, stores: dict) -> None:
    """A mask whose grid does not match its volume's is an error (masks and volumes are used voxel for voxel)."""
    shapes = {kind: store.shape(stem) for kind, store in stores.items() if stem in store}
    if not shapes:
        return
    from ..io.nifti import NiftiFile

    vshape = NiftiFile.open(volume_path).shape  # the header alone; CorruptVolumeError names the file
    for kind, shape in shapes.items():
        if shape is not None and tuple(shape) != vshape:
            raise ShapeMismatchError(
                f"{stem}: {kind} masks have shape {tuple(shape)} but the volume {volume_path} has shape {vshape}; "
                "masks must be on the volume's grid (re-export them, or re-run `radgenome-hf segment`)"
            )
