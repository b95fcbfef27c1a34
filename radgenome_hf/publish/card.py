"""Render the packed release's dataset card (README.md): YAML front matter + the body template.

The YAML is built with ``huggingface_hub.DatasetCardData`` and checked with the parser ``datasets``
itself uses (``datasets.utils.metadata.MetadataConfigs``), so a card that renders is a card that
``datasets.load_dataset(repo, config)`` understands. The body comes from ``radgenome_hf/data/README.template.md``
(``cards/README.template.md`` links to it) with ``{{ placeholder }}`` fields filled: ``pretty_name``, ``repo_id``, ``revision``, ``release_notes``,
``features:<config>`` (a column table per config), ``statistics``, ``figures`` and ``volume_format`` (how the
volumes are stored and read without this package: :func:`volume_format_markdown`).

>>> vqa = ConfigSpec("vqa", {"train": "vqa/train-*.parquet"}, [{"name": "question", "dtype": "string"}], default=True)
>>> card = render_card([vqa], {"rows": {"vqa": {"train": 3}}}, [], repo_id="org/radgenome")
>>> card.startswith("---\\n") and "config_name: vqa" in card and "| question | string |" in card
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import MalformedFileError, ReleaseNotFoundError

__all__ = ["ConfigSpec", "render_card", "card_configs", "volume_format_markdown", "default_template_path", "DEFAULT_LICENSES",
           "DEFAULT_TAGS", "DEFAULT_TASK_CATEGORIES"]

DEFAULT_LICENSES = ["cc-by-4.0", "cc-by-nc-sa-4.0"]
DEFAULT_TASK_CATEGORIES = ["visual-question-answering", "image-segmentation", "image-to-text"]
DEFAULT_TAGS = ["medical", "radiology", "chest-ct", "ct", "3d", "nifti", "vision-language", "grounding"]

_SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w:.-]*)\s*\}\}")

#: Section titles of the statistics tables that render_card knows; other keys get their key as title.
_STAT_TITLES = {
    "rows": "Rows per config and split",
    "structure_frequency": "Structure frequency (volumes with a non-empty mask)",
    "question_types": "VQA question types",
    "label_prevalence": "Abnormality label prevalence",
    "quality_flags": "Quality flags (volumes per flag and split)",
    "label_disagreements": "Reports whose CT-RATE labels disagree with their text (per label and split)",
}


@dataclass
class ConfigSpec:
    """One config of the packed release as the card declares it.

    Args:
        name: config name (``vqa``).
        data_files: split -> glob (or list of globs) relative to the repo root, e.g.
            ``{"train": "vqa/train-*.parquet"}``.
        features_yaml: ``datasets`` features in YAML-list form (``Features._to_yaml_list()``), or None
            to let ``datasets`` read them from the parquet schema metadata.
        default: whether this is the default config (exactly one config should be).
        description: one line shown in the statistics / overview.
    """

    name: str
    data_files: dict[str, str | list[str]]
    features_yaml: list | None = None
    default: bool = False
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other builder-config keys (columns, filters…)

    def to_yaml_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"config_name": self.name,
                             "data_files": [{"split": s, "path": p} for s, p in self.data_files.items()]}
        if self.default:
            d["default"] = True
        if self.features_yaml:
            d["features"] = self.features_yaml
        d.update(self.extra)
        return d


def default_template_path() -> Path:
    """The card template the package ships, ``radgenome_hf/data/README.template.md`` (``cards/README.template.md``
    of the source tree links to it: one file, so an installed package and a checkout render the same card)."""
    path = Path(__file__).resolve().parents[1] / "data" / "README.template.md"
    if not path.is_file():
        raise ReleaseNotFoundError(f"{path}: dataset card template not found (a broken install?); reinstall "
                                   "radgenome-hf or pass template_path=")
    return path


def _validate_configs(configs: Sequence[ConfigSpec]) -> None:
    if not configs:
        raise ValueError("render_card needs at least one ConfigSpec")
    names = [c.name for c in configs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate config names in the card: {sorted(dupes)}")
    for c in configs:
        if not re.match(r"^[A-Za-z0-9][\w.-]*$", c.name) or c.name == "data":
            raise ValueError(f"config name {c.name!r} is not allowed (letters, digits, _ . -; not 'data')")
        if not c.data_files:
            raise ValueError(f"config {c.name!r} has no data_files")
        for split, globs in c.data_files.items():
            if not _SPLIT_RE.match(split):
                raise ValueError(f"config {c.name!r}: split name {split!r} is not valid for datasets (use \\w+)")
            for g in [globs] if isinstance(globs, str) else globs:
                if g.startswith("/") or ".." in g.split("/") or "://" in g:
                    raise ValueError(f"config {c.name!r}: data_files path {g!r} must be relative to the repo root")
    defaults = [c.name for c in configs if c.default]
    if len(defaults) > 1:
        raise ValueError(f"several default configs: {defaults}; mark exactly one ConfigSpec(default=True)")


def card_configs(configs: Sequence[ConfigSpec]) -> list[dict[str, Any]]:
    """The ``configs:`` YAML list; the first config becomes default when none is marked.

    Writing ``default: true`` ourselves avoids the datasets 5.2.0 ``push_to_hub`` ``KeyError: 'default'``.
    """
    _validate_configs(configs)
    out = [c.to_yaml_dict() for c in configs]
    if not any(c.default for c in configs):
        out[0]["default"] = True
        out[0] = {k: out[0][k] for k in ("config_name", "data_files", "default", *out[0]) if k in out[0]}
    return out


def _md_cell(v: Any) -> str:
    if isinstance(v, float):
        s = f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}"
    elif isinstance(v, int):
        s = f"{v:,}"
    else:
        s = str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def _dtype_str(f: Any) -> str:
    """A short type for a features-YAML entry: ``string``, ``list<int32>``, ``struct{a,b}``…"""
    if isinstance(f, dict):
        if "dtype" in f:
            return str(f["dtype"])
        if "list" in f:
            return f"list<{_dtype_str(f['list'])}>"
        if "sequence" in f:
            return f"list<{_dtype_str(f['sequence'])}>"
        if "struct" in f:
            return "struct{" + ", ".join(str(x.get("name")) for x in f["struct"]) + "}"
        if "class_label" in f:
            return "class_label"
    if isinstance(f, list):
        return "struct{" + ", ".join(str(x.get("name")) for x in f if isinstance(x, dict)) + "}"
    return str(f)


def features_table(features_yaml: list | None) -> str:
    """Markdown table ``| column | type |`` of a features YAML list."""
    if not features_yaml:
        return "_Columns are read from the parquet schema._"
    lines = ["| column | type |", "| --- | --- |"]
    for f in features_yaml:
        lines.append(f"| {_md_cell(f.get('name', '?'))} | {_md_cell(_dtype_str(f))} |")
    return "\n".join(lines)


def _table(title: str, data: Any) -> str:
    if isinstance(data, str):
        return f"### {title}\n\n{data}\n"
    if isinstance(data, Mapping) and data and all(isinstance(v, Mapping) for v in data.values()):
        cols: list[str] = []
        for v in data.values():
            cols += [k for k in v if k not in cols]
        lines = ["| | " + " | ".join(map(_md_cell, cols)) + " |",
                 "| --- |" + " ---: |" * len(cols)]
        for k, v in data.items():
            lines.append(f"| {_md_cell(k)} | " + " | ".join(_md_cell(v.get(c, "")) for c in cols) + " |")
        return f"### {title}\n\n" + "\n".join(lines) + "\n"
    if isinstance(data, Mapping):
        lines = ["| | value |", "| --- | ---: |"] + [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in data.items()]
        return f"### {title}\n\n" + "\n".join(lines) + "\n"
    if isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        cols = list(data[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(_md_cell(r.get(c, "")) for c in cols) + " |" for r in data]
        return f"### {title}\n\n" + "\n".join(lines) + "\n"
    return f"### {title}\n\n{_md_cell(data)}\n"


def statistics_markdown(stats: Mapping[str, Any]) -> str:
    """Statistics tables: ``rows`` {config: {split: n}}, ``structure_frequency`` {name: n},
    ``question_types`` {type: n} (or {split: {type: n}}), ``label_prevalence`` {label: fraction},
    ``quality_flags`` {split: {flag: volumes}}, ``label_disagreements`` {label: {split: reports}}; any other
    key is rendered the same way with its key as the title.

    >>> print(statistics_markdown({"quality_flags": {"train": {"volumes checked": 4, "any flag": 1, "non_chest": 1}}}))
    ### Quality flags (volumes per flag and split)
    <BLANKLINE>
    | | volumes checked | any flag | non_chest |
    | --- | ---: | ---: | ---: |
    | train | 4 | 1 | 1 |
    """
    if not stats:
        return "_Statistics are not available for this revision._"
    parts = [_table(_STAT_TITLES.get(k, k.replace("_", " ").capitalize()), v) for k, v in stats.items()]
    return "\n".join(parts).rstrip()


def figures_markdown(figures: Sequence[str]) -> str:
    out = []
    for f in figures:
        p = str(f).replace("\\", "/")
        if p.startswith("/") or ".." in p.split("/"):
            raise ValueError(f"figure path {p!r} must be relative to the repo root (it is linked from README.md)")
        alt = Path(p).stem.replace("_", " ").replace("-", " ")
        out.append(f"![{alt}]({p})")
    return "\n\n".join(out)


def volume_format_markdown(volumes: str, example: str | None, repo_id: str, revision: str = "main") -> str:
    """The card's "Volume format" section: the layout of the release's volumes and, for chunked ones, a snippet
    that reads a crop with zarr alone (``example``: one volume's path in the repo).

    >>> text = volume_format_markdown("chunked", "volumes/train_1_a_1.zarr", "org/rg")
    >>> "zarr.open_array(" in text and "hf://datasets/org/rg@main/volumes/train_1_a_1.zarr" in text
    True
    """
    if volumes != "chunked":
        return ("## Volume format\n\nVolumes are the NIfTI files of the upstream release (`volumes/…/<volume>.nii.gz`), "
                "referenced from rows by path relative to the repo root; the `volume` column's `spacing` and `rescale` "
                "(CT-RATE v1 files have blank headers) say how to read them. Reading any part of a remote volume "
                "downloads the whole file.")
    from ..io.chunked import CHUNKS

    chunk = "×".join(str(c) for c in CHUNKS)
    lines = [
        "## Volume format",
        "",
        "Volumes are stored chunked, one [zarr v3](https://zarr-specs.readthedocs.io/en/latest/v3/core/index.html) "
        "array per volume (`volumes/…/<volume>.zarr/`), so any zarr v3 reader (zarr-python, tensorstore, "
        "neuroglancer, napari…) opens them, and reading a region fetches only the chunks it touches (HTTP range "
        "requests), not the whole volume.",
        "",
        "- `zarr.json`: shape `(K, J, I)`, the volume in `(k, j, i)` order, C-ordered: `array.T` is nibabel's "
        "`(i, j, k)` voxel order. Data type `int16` (`float32` where the HU values are not integers).",
        f"- `c/0/0/0`: one shard holding the whole volume, cut into inner chunks of {chunk} voxels, each "
        "compressed with blosc (zstd level 5, byte shuffle); the shard index (offset and length of every chunk, "
        "with a crc32c) is at its end (zarr's `sharding_indexed` codec). Chunks holding only the fill value are "
        "not stored.",
        "- Values are Hounsfield units: the rescale (slope, intercept) of the source file was applied when the "
        "volume was converted. It is recorded, not to be applied again (the `volume` column's `rescale` is null).",
        "- `attributes[\"radgenome\"]`: `affine` (4×4, voxel `(i, j, k)` to mm, as nibabel's), `spacing` (mm), "
        "`orientation` (e.g. `LPS`), `rescale` (the one applied), `source` (the NIfTI file it came from), `name`.",
        "",
        "A crop with zarr alone (`pip install zarr huggingface_hub`):",
        "",
        "```python",
        "import numpy as np",
        "import zarr",
        "",
        f'url = "hf://datasets/{repo_id}@{revision}/{example or "volumes/<path>/<volume>.zarr"}"',
        "# block_size=1 turns off fsspec's 5 MB read-ahead: only the chunks the crop touches are fetched",
        'z = zarr.open_array(url, mode="r", storage_options={"block_size": 1})',
        "k, j, i = (max(0, s // 2 - h) for s, h in zip(z.shape, (32, 48, 48)))",
        "crop = z[k:k + 64, j:j + 96, i:i + 96].T   # (i, j, k), HU",
        'attrs = z.attrs["radgenome"]',
        'affine = np.array(attrs["affine"])        # voxel (i, j, k) -> mm',
        'print(crop.shape, crop.dtype, attrs["spacing"], attrs["orientation"])',
        "```",
        "",
        "With `radgenome_hf`, rows decode to a lazy `Volume`: `row[\"volume\"].crop((i0, j0, k0, i1, j1, k1))` "
        "fetches only the chunks the box touches and keeps them in a local cache (`$RADGENOME_CACHE/chunks`); "
        "`row[\"volume\"].array()` fetches the whole volume in parallel range requests.",
    ]
    return "\n".join(lines)


def render_card(
    configs: list[ConfigSpec],
    stats: dict,
    figures: list[str],
    template_path: str | Path | None = None,
    *,
    repo_id: str = "<org>/radgenome-chestct",
    revision: str = "main",
    pretty_name: str = "RadGenome-Chest CT",
    license: str | list[str] = DEFAULT_LICENSES,
    task_categories: list[str] | None = None,
    tags: list[str] | None = None,
    dataset_info: list[dict] | dict | None = None,
    release_notes: str = "",
    extra_yaml: Mapping[str, Any] | None = None,
    volume_format: str = "",
) -> str:
    """Render README.md: validated YAML front matter followed by the filled body template.

    Raises ``ValueError`` for invalid configs and :class:`~radgenome_hf.errors.MalformedFileError` when
    the template has an unknown placeholder or the YAML would not parse as ``datasets`` configs.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    yaml_configs = card_configs(configs)
    data = DatasetCardData(
        license=license,
        pretty_name=pretty_name,
        task_categories=task_categories if task_categories is not None else list(DEFAULT_TASK_CATEGORIES),
        tags=tags if tags is not None else list(DEFAULT_TAGS),
        configs=yaml_configs,
        dataset_info=dataset_info,
        **dict(extra_yaml or {}),
    )
    tpath = Path(template_path) if template_path is not None else default_template_path()
    if not tpath.is_file():
        raise ReleaseNotFoundError(f"{tpath}: dataset card template not found")
    template = tpath.read_text(encoding="utf-8")
    by_name = {c.name: c for c in configs}
    values = {"pretty_name": pretty_name, "repo_id": repo_id, "revision": revision,
              "release_notes": release_notes, "statistics": statistics_markdown(stats),
              "figures": figures_markdown(figures), "volume_format": volume_format}

    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key.startswith("features:"):
            name = key.split(":", 1)[1]
            if name not in by_name:
                return "_Not included in this release._"
            c = by_name[name]
            return ((c.description + "\n\n") if c.description else "") + features_table(c.features_yaml)
        if key not in values:
            raise MalformedFileError(tpath, f"unknown placeholder {{{{ {key} }}}}; known: "
                                            f"{sorted(values)} and features:<config>")
        return str(values[key])

    body = _PLACEHOLDER.sub(fill, template)
    body = re.sub(r"\n{3,}", "\n\n", body)
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}")
    check_card(str(card), path=tpath)
    return str(card)


def check_card(text: str, path: str | Path | None = "README.md") -> dict[str, Any]:
    """Parse a card the way ``datasets`` does; returns the YAML dict. Raises MalformedFileError if invalid."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard(text)
        from datasets.utils.metadata import MetadataConfigs

        parsed = MetadataConfigs.from_dataset_card_data(card.data)
        parsed.get_default_config_name()
    except Exception as e:  # yaml errors, ValueError from MetadataConfigs
        raise MalformedFileError(path, f"dataset card YAML is not valid for datasets: {e}") from e
    return card.data.to_dict()
