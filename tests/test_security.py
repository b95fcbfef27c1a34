"""Security: no unpickling of downloaded content, the pickled hierarchy read only on request, tokens never
written out, and user-given names and paths validated."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest

import radgenome_hf
from radgenome_hf.errors import MalformedFileError, RadGenomeError, UnsafeFileError, VolumeNameError
from radgenome_hf.io.hierarchy import read_report_hierarchy
from radgenome_hf.names import VolumeName, ctrate_volume_path, mask_dir, mask_path, radgenome_volume_path

pytestmark = pytest.mark.timeout(180)

PACKAGE = Path(radgenome_hf.__file__).parent
#: The one module allowed to unpickle, behind allow_pickle=True.
PICKLE_ALLOWED = {"hierarchy.py"}


# ---------------------------------------------------------------------------------------------------
# No unpickling of downloaded content (static scan of the package)
# ---------------------------------------------------------------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    for p in files:
        yield p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p))


def test_every_torch_load_passes_weights_only_true():
    bad = []
    for p, tree in _sources():
        for call in _calls(tree):
            name = _dotted(call.func)
            if name.endswith("torch.load") or name in ("load_state_dict_from_url",):
                kw = _kw(call, "weights_only")
                if not (isinstance(kw, ast.Constant) and kw.value is True):
                    bad.append(f"{p.relative_to(PACKAGE)}:{call.lineno}: {name}(...) without weights_only=True")
    assert not bad, "\n".join(bad)


def test_no_pickle_loading_outside_the_opt_in_helper():
    risky = ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "dill.loads", "cloudpickle.load",
             "cloudpickle.loads", "joblib.load", "pandas.read_pickle", "pd.read_pickle", "read_pickle",
             "pickle.Unpickler", "shelve.open", "marshal.load", "marshal.loads")
    bad = []
    for p, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(m and m.split(".")[0] in ("dill", "cloudpickle", "shelve", "marshal") for m in mods):
                    bad.append(f"{p.relative_to(PACKAGE)}:{node.lineno}: imports {mods}")
        for call in _calls(tree):
            name = _dotted(call.func)
            if any(name == r or name.endswith("." + r) for r in risky) and p.name not in PICKLE_ALLOWED:
                bad.append(f"{p.relative_to(PACKAGE)}:{call.lineno}: {name}(...)")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                kw = _kw(call, "allow_pickle")
                if kw is not None and not (isinstance(kw, ast.Constant) and kw.value is False):
                    bad.append(f"{p.relative_to(PACKAGE)}:{call.lineno}: np.load(allow_pickle=...)")
    assert not bad, "\n".join(bad)


def test_the_scan_catches_what_it_looks_for():
    """The AST helpers really recognise the calls (so the two scans above cannot pass vacuously)."""
    tree = ast.parse("import torch, pickle, numpy as np\ntorch.load(f)\npickle.loads(b)\nnp.load(p, allow_pickle=True)")
    names = [_dotted(c.func) for c in _calls(tree)]
    assert names == ["torch.load", "pickle.loads", "np.load"]
    assert _kw(list(_calls(tree))[2], "allow_pickle").value is True


# ---------------------------------------------------------------------------------------------------
# report_hierarchy_tree.zip: only on request, with a warning
# ---------------------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _hierarchy_zip(path: Path, payload: object) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("report_hierarchy_tree/train/tree.pkl", pickle.dumps(payload, protocol=4))
        zf.writestr("report_hierarchy_tree/README.txt", b"not a pickle")
        zf.writestr("report_hierarchy_tree/valid/", b"")
    return path


def test_hierarchy_is_refused_by_default_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    z = _hierarchy_zip(tmp_path / "report_hierarchy_tree.zip", _Evil(str(marker)))
    with pytest.raises(UnsafeFileError) as e:
        read_report_hierarchy(z)
    msg = str(e.value)
    assert str(z) in msg and "pickle" in msg and "allow_pickle=True" in msg
    assert isinstance(e.value, RadGenomeError)
    assert not marker.exists()


def test_hierarchy_loads_with_allow_pickle_and_warns(tmp_path):
    tree = {"lung": {"left lung": ["upper lobe of left lung"]}, "heart": {}}
    z = _hierarchy_zip(tmp_path / "report_hierarchy_tree.zip", tree)
    with pytest.warns(UserWarning, match="unpickling"):
        got = read_report_hierarchy(z, allow_pickle=True)
    assert got == {"report_hierarchy_tree/train/tree.pkl": tree}
    single = tmp_path / "tree.pkl"
    single.write_bytes(pickle.dumps(tree))
    with pytest.warns(UserWarning):
        assert read_report_hierarchy(single, allow_pickle=True) == {"tree.pkl": tree}


def test_hierarchy_corrupt_member_is_a_package_error(tmp_path):
    z = tmp_path / "report_hierarchy_tree.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("t.pkl", b"\x80\x04garbage")
    with pytest.warns(UserWarning), pytest.raises(MalformedFileError, match="t.pkl"):
        read_report_hierarchy(z, allow_pickle=True)


# ---------------------------------------------------------------------------------------------------
# Tokens never logged or written
# ---------------------------------------------------------------------------------------------------

SENTINEL = "hf_SENTINELtoken0123456789abcdefXYZ"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle in p.read_bytes():
            hits.append(str(p))
    return hits


def test_token_is_never_written_to_outputs_logs_or_reports(synthetic_release, tmp_path, monkeypatch, caplog, capfd):
    from radgenome_hf.generate.backends import get_backend
    from radgenome_hf.publish.build import build_release
    from radgenome_hf.generate.segment import discover_volumes, run_segmentation
    from radgenome_hf.publish.hub import publish_release
    from radgenome_hf.testing.hub_server import HubServer

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "packed"
    report = build_release(synthetic_release.root, out, configs=("vqa", "segmentation"))
    seg = run_segmentation(discover_volumes(synthetic_release.root)[:2], tmp_path / "seg", get_backend("threshold"),
                           workers=1, progress=False)
    assert seg.ok, seg.summary()
    with HubServer(token=SENTINEL) as hub, hub.patch_client():
        pub = publish_release(out, "radgenome/token-check", branch="main", tag="v0", endpoint=hub.endpoint,
                              token=SENTINEL, verify=True)
    assert pub.verification is not None and pub.verification.ok, pub.verification
    texts = {
        "build report": str(report), "segmentation summary": seg.summary(), "publish report": str(pub),
        "publish report json": json.dumps(asdict(pub), default=str), "logs": caplog.text,
        "captured output": "".join(capfd.readouterr()),
    }
    leaked = [k for k, v in texts.items() if SENTINEL in v]
    leaked += _files_containing(out, SENTINEL.encode()) + _files_containing(tmp_path / "seg", SENTINEL.encode())
    assert not leaked, f"token found in: {leaked}"
    # the check itself is live: the token did travel (to the server, as a header)
    assert hub.token == SENTINEL


# ---------------------------------------------------------------------------------------------------
# Names and paths from users
# ---------------------------------------------------------------------------------------------------

HOSTILE = ["../train_1_a_1", "train_1_a_1/../../etc/passwd", "../../..", "/etc/passwd", "train_1_a_1\x00.nii.gz",
           "train_1_..%2f_1", "train_1_a/../1", "C:\\train_1_a_1\\..\\..", "train_-1_a_1", "train_1_a_1;rm -rf"]


@pytest.mark.parametrize("text", HOSTILE)
def test_paths_built_from_volume_names_stay_in_their_layout(text, tmp_path):
    from radgenome_hf.io.release import UpstreamRelease

    try:
        v = VolumeName.parse(text)
    except VolumeNameError:
        return
    # a name given with a path keeps only its (validated) basename: no component of it reaches a built path
    root = tmp_path / "RadGenome-ChestCT"
    rel = UpstreamRelease(str(root), str(tmp_path / "CT-RATE"))
    for built in (ctrate_volume_path(v), radgenome_volume_path(v), mask_dir(v, "anatomy"),
                  rel.radgenome_volume(v), rel.mask_folder(v, "region")):
        assert ".." not in Path(built).parts and "\x00" not in built
        assert Path(built).resolve().is_relative_to(tmp_path.resolve()) or not Path(built).is_absolute()


def test_hostile_names_are_rejected_as_volume_names():
    for text in ["..", "../..", "/", "train_1_a_1/..", "train_1_a_1\x00", "train_1_a_1 ", "train_1_a_1.nii.gz/"]:
        with pytest.raises(VolumeNameError):
            VolumeName.parse(text)


def test_mask_path_rejects_structure_names_with_path_parts():
    with pytest.raises((VolumeNameError, ValueError)):
        mask_path("train_1_a_1", "anatomy", "../../../../etc/cron.d/x")


@pytest.mark.parametrize("repo_id", ["../etc", "org/../../x", "org/name/extra", "", "a" * 200 + "/b", "org/na me"])
def test_publish_rejects_bad_repo_ids(repo_id):
    from radgenome_hf.errors import PublishTargetError
    from radgenome_hf.publish.hub import validate_target

    with pytest.raises(PublishTargetError):
        validate_target(repo_id)


@pytest.mark.parametrize("branch", ["../main", "main\x00", "refs/heads/../x", "a..b", "-x", "main.lock", " "])
def test_publish_rejects_bad_revisions(branch):
    from radgenome_hf.errors import PublishTargetError
    from radgenome_hf.publish.hub import validate_target

    with pytest.raises(PublishTargetError):
        validate_target("org/name", branch=branch)


def test_volume_open_rejects_missing_and_names_the_file(tmp_path):
    from radgenome_hf.errors import MissingVolumeError
    from radgenome_hf.access.volume import Volume

    with pytest.raises(MissingVolumeError, match="nope.nii.gz"):
        Volume.open(tmp_path / "../nope.nii.gz")
    with pytest.raises(ValueError):
        Volume.open(io.BytesIO(b"").getvalue(), spacing=(float("nan"), 1, 1))
