"""Contract tests: how radgenome_hf hooks into datasets. If datasets changes what we rely on, these fail loudly."""

from __future__ import annotations

import inspect

import datasets
import datasets.load as load
import pytest

import radgenome_hf
from radgenome_hf.hf.loading import BUILDER_MODULE, BUILDER_NAME


def test_datasets_still_resolves_names_through_dataset_module_factory():
    # load_dataset_builder must still look the factory up by name in datasets.load at call time
    src = inspect.getsource(load.load_dataset_builder)
    assert "dataset_module_factory(" in src, "datasets.load_dataset_builder no longer calls dataset_module_factory"
    params = inspect.signature(load.DatasetModule).parameters
    assert list(params)[:3] == ["module_path", "hash", "builder_kwargs"], params
    assert hasattr(load, "import_main_class")


def test_import_registers_and_local_folders_still_win(tmp_path, monkeypatch):
    assert getattr(load.dataset_module_factory, "_radgenome_hf", False)
    module = load.dataset_module_factory(BUILDER_NAME)
    assert module.module_path == BUILDER_MODULE
    assert load.import_main_class(module.module_path).__name__ == "RadGenome"
    # a local folder named "radgenome" keeps datasets' own behaviour
    (tmp_path / "radgenome").mkdir()
    (tmp_path / "radgenome" / "data.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    local = load.dataset_module_factory(BUILDER_NAME)
    assert local.module_path != BUILDER_MODULE


def test_register_is_idempotent():
    before = load.dataset_module_factory
    radgenome_hf.register()
    radgenome_hf.register()
    assert load.dataset_module_factory is before


def test_builder_lists_all_configs():
    builder_cls = load.import_main_class(BUILDER_MODULE)
    assert [c.name for c in builder_cls.BUILDER_CONFIGS] == [
        "reports", "segmentation", "grounded_reports", "vqa", "scene_graph", "anatomy_pairs",
    ]
    with pytest.raises(ValueError, match="not found"):
        datasets.load_dataset_builder("radgenome", "nope", data_dir=".")


def test_custom_feature_types_are_known_to_datasets():
    from datasets.features.features import _FEATURE_TYPES, generate_from_dict

    for name in ("VolumeFeature", "LazyMaskFeature", "MaskSetFeature"):
        assert name in _FEATURE_TYPES
        feat = generate_from_dict({"_type": name})
        assert type(feat).__name__ == name


def test_no_data_dir_offline_fails_at_once_with_advice(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    from radgenome_hf.errors import HubAccessError

    with pytest.raises(HubAccessError, match="data_dir"):
        radgenome_hf.load_dataset("vqa")
