"""The text stages over shards of patients (generate/text.py) give exactly what one serial pass gives."""

from __future__ import annotations

import pytest

from radgenome_hf.generate.text import merged_masks, patient_shards, run_text_stages


@pytest.fixture(scope="module")
def inputs(synthetic_release, tmp_path_factory):
    """Grounded reports, labels, packed mask files (both kinds) and a patient re-split of the synthetic release."""
    import pyarrow as pa

    from radgenome_hf.generate.ground import ground_reports
    from radgenome_hf.generate.packing import pack_mask_sources
    from radgenome_hf.generate.runner import make_executor
    from radgenome_hf.generate.splits import assign_splits
    from radgenome_hf.io.release import UpstreamRelease
    from radgenome_hf.io.tables import read_ctrate_labels, read_ctrate_reports
    from radgenome_hf.names import VolumeName

    release = UpstreamRelease.discover(synthetic_release.root, need="ctrate")
    reports = pa.concat_tables([read_ctrate_reports(p) for s in ("train", "valid") if (p := release.ctrate_reports(s))])
    labels = pa.concat_tables([read_ctrate_labels(p) for s in ("train", "valid") if (p := release.ctrate_labels(s))])
    grounded = ground_reports(reports, progress=False)
    grounded = {s: grounded[s] for s in sorted(grounded, key=VolumeName.parse)}
    work = tmp_path_factory.mktemp("text_masks")
    sources = [(src, work / f"{split}_{kind}") for split in ("train", "valid") for kind in ("anatomy", "region")
               if (src := release.mask_source(split, kind)) is not None]
    with make_executor(workers=1) as ex:
        reps = pack_mask_sources(sources, ex, progress=False)
    files: dict[str, dict[str, str]] = {}
    for (src, _), rep in zip(sources, reps):
        for stem, path in rep.outputs.items():
            files.setdefault(stem, {})[src.kind] = str(path)
    grounded = {s: g for s, g in grounded.items() if s in files}  # the volumes with masks (as the rebuild keeps)
    table = assign_splits(list(grounded), validation=0.34, seed=1)
    split_of = dict(zip(table["volume_name"].to_pylist(), table["split"].to_pylist()))
    assert set(split_of.values()) == {"train", "validation"}
    assert len(grounded) > 6 and all(set(files[s]) == {"anatomy", "region"} for s in grounded)
    return grounded, labels, files, split_of


def _decoded_merge(files):
    """The reference merge: every region-only structure decoded and added to the anatomy masks."""
    from radgenome_hf.access.masks import PackedMasks

    anatomy, region = PackedMasks.load(files["anatomy"]), PackedMasks.load(files["region"])
    for name in region.names:
        if name not in anatomy:
            anatomy.add(name, region.mask(name), source="region")
    return anatomy


@pytest.fixture(scope="module")
def serial(inputs):
    """One serial pass of the stage functions, as the rebuild ran them before they were sharded."""
    from radgenome_hf.generate.anatomy_pairs import build_anatomy_pairs
    from radgenome_hf.generate.ground import region_report_rows
    from radgenome_hf.generate.scene_graph import build_scene_graphs
    from radgenome_hf.generate.vqa import build_vqa

    grounded, labels, files, split_of = inputs
    masks = {s: _decoded_merge(files[s]) for s in grounded}
    graphs = {r["volume_name"]: r for r in build_scene_graphs(grounded, masks.get, progress=False)}
    pairs = build_anatomy_pairs(grounded, labels=labels, masks_of=masks.get, progress=False)
    vqa = {sp: build_vqa({s: g for s, g in grounded.items() if split_of[s] == sp}, seed=3)
           for sp in ("train", "validation")}
    rr = {s: region_report_rows(s, g.sentences) for s, g in grounded.items()}
    return graphs, pairs, vqa, rr


def test_merged_masks_equal_the_decoded_merge(inputs):
    _, _, files, _ = inputs
    for f in files.values():
        got, want = merged_masks(f), _decoded_merge(f)
        assert got.names == want.names and got.sources == want.sources
        assert got == want  # same voxels (PackedMasks.__eq__ compares every structure)
        assert any(src == "region" for src in got.sources.values())


def test_patient_shards_keep_patients_whole(inputs):
    from radgenome_hf.names import VolumeName

    stems = list(inputs[0])
    for size in (1, 2, 3, 100):
        shards = patient_shards(stems, size)
        assert [s for sh in shards for s in sh] == stems
        owners = [{VolumeName.parse(s).patient_id for s in sh} for sh in shards]
        assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])
        assert all(len(sh) <= size or len(owners[i]) == 1 for i, sh in enumerate(shards))


@pytest.mark.parametrize("workers,shard_volumes", [(1, 1), (1, None), (2, None), (2, 3)])
def test_sharded_equals_serial(inputs, serial, workers, shard_volumes, tmp_path):
    from radgenome_hf.generate.runner import make_executor

    grounded, labels, files, split_of = inputs
    graphs, pairs, vqa, rr = serial
    with make_executor(workers=workers) as ex:
        out = run_text_stages(grounded, split_of, ex, labels=labels, mask_files=files, seed=3, json_dir=tmp_path,
                              shard_volumes=shard_volumes, progress=False)
    assert out.shards > 1
    assert out.graphs == graphs
    assert [r for s in grounded for r in out.pairs[s]] == pairs
    assert out.vqa == vqa
    assert out.region_report == rr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}_SceneGraph.json" for s in grounded)
    # the graphs compare each patient's exams: some volume has a prior, found inside its shard
    assert any(g["prior_volume_name"] and g["relationships"] for g in out.graphs.values())
