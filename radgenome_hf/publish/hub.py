"""Publish a release folder to a Hugging Face Hub dataset repo: diff by hash, one atomic commit, verify, tag.

Flow of :func:`publish_release`:

1. validate the repo id, branch, tag and the folder's paths (errors are :class:`PublishTargetError`);
2. create the repo if missing (``private``/``gated`` applied with ``update_repo_settings``), create the
   branch from ``main`` if missing, and read the branch head **once**;
3. diff: each local file's sha256 (the LFS oid) and git blob sha1 against the remote tree
   (``list_repo_tree(recursive=True)`` gives ``lfs.sha256`` / ``blob_id``) -> add / update / delete /
   unchanged. Only added and changed files are sent; remote files absent locally are deleted
   (``.gitattributes`` is kept). ``dry_run=True`` stops here and returns the plan;
4. **stage**: upload large files in batches with ``HfApi.preupload_lfs_files`` (nothing is visible yet),
   then ONE ``create_commit`` on a fresh staging branch (``publish-staging-<hex>``, started at the head
   read in step 2), so the published branch does not move yet;
5. **verify** the staged commit by loading every config of the README YAML ``configs:`` back with
   ``datasets.load_dataset(repo_id, config, revision=<commit sha>)`` in a fresh process with a fresh
   cache (what a user sees), compare row counts with ``release_manifest.json`` when the folder has
   one (``{"configs": {"vqa": {"train": N, ...}}}``), decode a few rows per split. A release that does not
   verify never reaches the branch: users of ``main`` keep loading the previous revision;
6. **move**: the same operations are committed on the branch with ``parent_commit`` = the head read in
   step 2 (the large files are already on the Hub: nothing is sent twice), and the new commit's tree is
   checked to be the staged, verified one. An interrupted or failed push therefore leaves the branch
   exactly as it was; re-running it re-uses the LFS objects already uploaded, and a concurrent commit on
   the branch makes the move fail (412) instead of silently overwriting it. The staging branch is deleted;
7. tag the commit (``create_tag``) only if verification passed.

With ``verify=False`` there is nothing to stage for: step 4 commits on the branch directly.

Nothing here is specific to the test server: ``endpoint=None`` means the real Hub (or ``HF_ENDPOINT``).
Tokens are passed to ``huggingface_hub`` and, for verification, to the child process through its
environment; they are never logged nor written into reports, cards or manifests.

>>> from radgenome_hf.publish.hub import validate_target
>>> validate_target("org/radgenome", branch="release-v1", tag="v1.0")
>>> validate_target("org/bad name")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
radgenome_hf.errors.PublishTargetError: invalid repo id 'org/bad name': ...
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from ..errors import (
    HubAccessError, MalformedFileError, PublishTargetError, PublishVerificationError, ReleaseNotFoundError,
)
from ..io.hub import hub_error

__all__ = ["publish_release", "plan_release", "PublishReport", "PublishPlan", "FileChange", "Verification",
           "PublishTargetError", "PublishVerificationError", "validate_target", "verify_release"]

logger = logging.getLogger(__name__)

#: Remote files publish never deletes even when the folder does not have them.
KEEP_REMOTE = (".gitattributes",)
#: Local names never uploaded.
_SKIP_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}
_SKIP_FILES = {".DS_Store", "Thumbs.db"}
_MANIFEST = "release_manifest.json"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------------------------- validation
def _check_ref(kind: str, name: str) -> None:
    bad = (
        not name or name.startswith(("/", "-", ".", "refs/")) or name.endswith(("/", ".", ".lock"))
        or ".." in name or "//" in name or "@{" in name or name == "@" or len(name) > 200
        or re.search(r"[\x00-\x20~^:?*\[\\\x7f]", name) is not None or _HEX40.match(name) is not None
    )
    if bad:
        raise PublishTargetError(
            f"invalid {kind} name {name!r}: use letters, digits and . _ - / (no spaces, '..', '~^:?*[\\', "
            "no leading '.', '-' or 'refs/', not a 40-hex commit id), e.g. 'release-v1' or 'v1.0'")


def validate_target(repo_id: str, *, branch: str = "main", tag: str | None = None) -> None:
    """Check a repo id (``org/name``), branch and tag name; raises :class:`PublishTargetError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise PublishTargetError(f"repo id must be a string like 'org/name', got {type(repo_id).__name__}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishTargetError(f"invalid repo id {repo_id!r}: {e}") from None
    if repo_id.count("/") != 1:
        raise PublishTargetError(f"invalid repo id {repo_id!r}: publish to '<user or org>/<name>', e.g. "
                                 "'my-org/radgenome-chestct'")
    _check_ref("branch", branch)
    if tag is not None:
        _check_ref("tag", tag)
        if tag == branch:
            raise PublishTargetError(f"tag {tag!r} has the same name as the branch; pick e.g. 'v1.0'")


def _check_path(folder: Path, rel: str) -> None:
    parts = rel.split("/")
    if (rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel
            or re.search(r"[\x00-\x1f\x7f]", rel) or len(rel.encode()) > 1000):
        raise PublishTargetError(f"{folder / rel}: this file name cannot be published to the Hub "
                                 "(control characters, backslash, '..' or too long); rename it")


# --------------------------------------------------------------------------------------------- planning
@dataclass
class FileChange:
    """One path of the plan. ``action`` is add / update / delete / unchanged."""

    path: str
    action: Literal["add", "update", "delete", "unchanged"]
    size: int
    sha256: str | None = None
    local_path: str | None = None


@dataclass
class PublishPlan:
    """What a publish would change on ``repo_id@branch`` (head ``base_commit``; None = repo/branch new)."""

    repo_id: str
    branch: str
    base_commit: str | None
    changes: list[FileChange]
    repo_exists: bool = True
    branch_exists: bool = True

    def of(self, action: str) -> list[FileChange]:
        return [c for c in self.changes if c.action == action]

    @property
    def to_upload(self) -> list[FileChange]:
        return [c for c in self.changes if c.action in ("add", "update")]

    @property
    def has_changes(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def counts(self) -> dict[str, dict[str, int]]:
        out = {a: {"files": 0, "bytes": 0} for a in ("add", "update", "delete", "unchanged")}
        for c in self.changes:
            out[c.action]["files"] += 1
            out[c.action]["bytes"] += c.size
        return out

    def summary(self, max_files: int = 20) -> str:
        lines = [f"plan for {self.repo_id}@{self.branch} (head {self.base_commit or '<new>'}):"]
        for action, v in self.counts().items():
            lines.append(f"  {action:<9} {v['files']:>6} files {_human(v['bytes']):>10}")
        shown = [c for c in self.changes if c.action != "unchanged"]
        for c in shown[:max_files]:
            lines.append(f"    {c.action:<6} {c.path} ({_human(c.size)})")
        if len(shown) > max_files:
            lines.append(f"    … and {len(shown) - max_files} more")
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _hash_file(path: Path, size: int) -> tuple[str, str]:
    """(sha256, git blob sha1) in one read pass."""
    h256 = hashlib.sha256()
    h1 = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h256.update(chunk)
            h1.update(chunk)
    return h256.hexdigest(), h1.hexdigest()


def local_files(folder: str | Path) -> dict[str, Path]:
    """Every file of a release folder by its repo path (``a/b.parquet``), sorted; skips .git, caches."""
    root = Path(folder)
    if not root.is_dir():
        raise ReleaseNotFoundError(f"{root}: release folder not found (build it first, e.g. with "
                                   "radgenome_hf.publish.build)")
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name in _SKIP_FILES or ".tmp" in name:
                continue
            p = Path(dirpath) / name
            if p.is_symlink() and not p.resolve().is_relative_to(root.resolve()):
                raise PublishTargetError(f"{p}: symlink points outside the release folder; copy the file in")
            rel = p.relative_to(root).as_posix()
            _check_path(root, rel)
            out[rel] = p
    return dict(sorted(out.items()))


def _diff(folder: Path, remote: dict[str, Any], *, delete: bool) -> list[FileChange]:
    from tqdm.auto import tqdm

    files = local_files(folder)
    changes: list[FileChange] = []
    total = sum(p.stat().st_size for p in files.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="hashing", disable=None, leave=False) as bar:
        for rel, p in files.items():
            size = p.stat().st_size
            sha256, blob = _hash_file(p, size)
            bar.update(size)
            r = remote.get(rel)
            if r is None:
                action = "add"
            elif (r.lfs is not None and r.lfs.sha256 == sha256) or (r.lfs is None and r.blob_id == blob):
                action = "unchanged"
            else:
                action = "update"
            changes.append(FileChange(rel, action, size, sha256, str(p)))  # type: ignore[arg-type]
    if delete:
        for rel, r in sorted(remote.items()):
            if rel not in files and rel not in KEEP_REMOTE:
                changes.append(FileChange(rel, "delete", int(r.size or 0)))
    return changes


def _remote_files(api: Any, repo_id: str, revision: str | None) -> dict[str, Any]:
    """The files of a revision (path -> tree entry with blob id / LFS sha256); empty for a new repo or branch."""
    if revision is None:
        return {}
    try:
        return {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision,
                                                      recursive=True) if hasattr(f, "blob_id")}
    except Exception as e:  # noqa: BLE001 - any failure of the listing (5xx, a branch deleted meanwhile)
        raise hub_error(e, f"listing the files of {repo_id}@{revision}") from None


def plan_release(folder: str | Path, repo_id: str, *, branch: str = "main", token: str | bool | None = None,
                 endpoint: str | None = None, delete: bool = True, api: Any = None) -> PublishPlan:
    """Compute the plan (nothing is written, on the Hub or locally)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    validate_target(repo_id, branch=branch)
    folder = Path(folder)
    local_files(folder)  # fail on a missing folder before any network call
    api = api or HfApi(endpoint=endpoint, token=token)
    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return PublishPlan(repo_id, branch, None, _diff(folder, {}, delete=delete), repo_exists=False,
                           branch_exists=False)
    except HfHubHTTPError as e:
        raise hub_error(e, f"reading the refs of {repo_id}") from None
    heads = {b.name: b.target_commit for b in refs.branches}
    head = heads.get(branch)
    base = head if head is not None else heads.get("main")
    remote = _remote_files(api, repo_id, base)
    return PublishPlan(repo_id, branch, base, _diff(folder, remote, delete=delete), True, head is not None)


# --------------------------------------------------------------------------------------------- verification
@dataclass
class Verification:
    """Result of loading a revision back. ``rows`` = {config: {split: n}}; ``errors`` = what did not match."""

    ok: bool
    revision: str
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    decoded_rows: int = 0
    errors: list[str] = field(default_factory=list)
    method: str = "datasets.load_dataset"


def _card_configs(folder: Path) -> list[str]:
    readme = folder / "README.md"
    if not readme.is_file():
        return []
    from huggingface_hub import DatasetCard

    try:
        data = DatasetCard(readme.read_text(encoding="utf-8")).data
    except Exception as e:
        raise MalformedFileError(readme, f"cannot parse the dataset card YAML: {e}") from None
    return [c["config_name"] for c in (data.get("configs") or []) if isinstance(c, dict) and "config_name" in c]


def _read_manifest(folder: Path) -> dict[str, dict[str, int]] | None:
    p = folder / _MANIFEST
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        configs = data["configs"]
        return {c: {s: int(n) for s, n in splits.items()} for c, splits in configs.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MalformedFileError(p, f"expected {{\"configs\": {{\"<config>\": {{\"<split>\": <rows>}}}}}}: {e}") from None


_CHILD = "from radgenome_hf.publish.hub import _verify_child_main; _verify_child_main()"


def _verify_child_main() -> None:  # runs in the child process (fresh HF_HOME, env set by the parent)
    req = json.loads(sys.stdin.read())
    import datasets

    datasets.config.USE_PARQUET_EXPORT = False
    datasets.disable_progress_bars()
    out: dict[str, Any] = {"rows": {}, "decoded": 0, "errors": []}
    for cfg in req["configs"]:
        try:
            dd = datasets.load_dataset(req["repo_id"], cfg, revision=req["revision"])
            out["rows"][cfg] = {s: d.num_rows for s, d in dd.items()}
            for s, d in dd.items():
                for i in range(min(req["sample"], d.num_rows)):
                    row = d[i]  # decodes every feature of the row
                    if not isinstance(row, dict):
                        raise TypeError(f"row {i} of {cfg}/{s} decoded to {type(row).__name__}")
                    out["decoded"] += 1
        except Exception as e:  # report, the parent decides
            out["errors"].append(f"config {cfg!r}: {type(e).__name__}: {str(e)[:500]}")
    sys.stdout.write("\n@@RESULT@@" + json.dumps(out) + "\n")


def verify_release(repo_id: str, revision: str, folder: str | Path, *, endpoint: str | None = None,
                   token: str | bool | None = None, sample_rows: int = 2, timeout: float = 900) -> Verification:
    """Load every README config of ``folder`` back from ``repo_id@revision`` in a fresh process and cache.

    Row counts are compared with ``release_manifest.json`` when present; ``sample_rows`` rows per split
    are decoded. Works with the real Hub (``endpoint=None``) and any Hub-compatible endpoint.
    """
    folder = Path(folder)
    configs = _card_configs(folder)
    manifest = _read_manifest(folder)
    v = Verification(ok=True, revision=revision)
    if manifest is not None:
        missing = sorted(set(manifest) - set(configs))
        if missing:
            v.errors.append(f"{folder / _MANIFEST}: configs {missing} are not declared in README.md configs:")
    if not configs:
        v.errors.append(f"{folder / 'README.md'}: no `configs:` in the card YAML, nothing to load back")
        v.ok = False
        return v
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="radgenome-verify-") as home:
        env.update({"HF_HOME": home, "HF_DATASETS_CACHE": str(Path(home) / "datasets"), "HF_HUB_OFFLINE": "0",
                    "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1"})
        env["HF_HUB_CACHE"] = str(Path(home) / "hub")
        if endpoint:
            env["HF_ENDPOINT"] = endpoint
        if token is None:  # the child has a fresh HF_HOME: hand it the saved login token, if any
            from huggingface_hub import get_token

            token = get_token()
        if isinstance(token, str):
            env["HF_TOKEN"] = token
        else:
            env.pop("HF_TOKEN", None)
        req = {"repo_id": repo_id, "revision": revision, "configs": configs, "sample": sample_rows}
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(req), env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            v.errors.append(f"loading {repo_id}@{revision} back took more than {timeout:.0f} s")
            v.ok = False
            return v
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        tail = (proc.stderr or proc.stdout)[-1500:]
        if isinstance(token, str) and token:
            tail = tail.replace(token, "<token>")
        v.errors.append(f"verification process failed (exit {proc.returncode}): {tail}")
        v.ok = False
        return v
    res = json.loads(proc.stdout[marker + len("@@RESULT@@"):].strip())
    v.rows, v.decoded_rows = res["rows"], res["decoded"]
    v.errors += res["errors"]
    for cfg, splits in (manifest or {}).items():
        got = v.rows.get(cfg)
        if got is None:
            continue
        for split, n in splits.items():
            if got.get(split) != n:
                v.errors.append(f"config {cfg!r} split {split!r}: {got.get(split)} rows on the Hub, "
                                f"{n} in {_MANIFEST}")
        extra = sorted(set(got) - set(splits))
        if extra:
            v.errors.append(f"config {cfg!r}: splits {extra} on the Hub are not in {_MANIFEST}")
    v.ok = not v.errors
    return v


# --------------------------------------------------------------------------------------------- publishing
@dataclass
class PublishReport:
    """What a publish did. Contains no token.

    ``uploaded_files``/``uploaded_bytes`` count the files the commit adds or changes (for a dry run: would);
    large files whose content the Hub already holds (e.g. from an interrupted earlier push) are not sent
    again. ``skipped_*`` are unchanged files, ``deleted_files`` remote files the folder no longer has.
    ``commit`` is the sha the branch points at afterwards (``None`` for a dry run).
    """

    repo_id: str
    branch: str
    commit: str | None
    parent: str | None
    dry_run: bool
    uploaded_files: int
    uploaded_bytes: int
    skipped_files: int
    skipped_bytes: int
    deleted_files: int
    tag: str | None = None
    verification: Verification | None = None
    created_repo: bool = False
    created_branch: bool = False
    plan: PublishPlan | None = None
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("plan")
        d["changes"] = [asdict(c) | {"local_path": None} for c in (self.plan.changes if self.plan else [])]
        return d

    def summary(self) -> str:
        lines = [f"{'DRY RUN: ' if self.dry_run else ''}{self.repo_id}@{self.branch}: "
                 f"commit {self.commit or '-'} (parent {self.parent or '-'})",
                 f"  uploaded {self.uploaded_files} files ({_human(self.uploaded_bytes)}), unchanged "
                 f"{self.skipped_files} ({_human(self.skipped_bytes)}), deleted {self.deleted_files}"]
        if self.verification is not None:
            v = self.verification
            lines.append(f"  verification: {'ok' if v.ok else 'FAILED'}; rows {json.dumps(v.rows, sort_keys=True)}"
                         f"; {v.decoded_rows} rows decoded")
            lines += [f"    - {e}" for e in v.errors]
        lines.append(f"  tag: {self.tag or '-'}")
        return "\n".join(lines)


def _run_verify(verify: Callable[..., Any] | bool, repo_id: str, revision: str | None, folder: Path, api: Any,
                endpoint: str | None, token: str | bool | None) -> Verification:
    if callable(verify):
        res = verify(repo_id=repo_id, revision=revision, folder=folder, api=api)
        return res if isinstance(res, Verification) else Verification(
            ok=bool(res), revision=revision, method=getattr(verify, "__name__", "custom"),
            errors=[] if res else ["custom verification returned False"])
    return verify_release(repo_id, revision, folder, endpoint=endpoint, token=token)


def _drop_branch(api: Any, repo_id: str, name: str | None) -> None:
    """Delete a staging branch; best effort (a leftover one is harmless: it is nobody's revision)."""
    if name is None:
        return
    try:
        api.delete_branch(repo_id, branch=name, repo_type="dataset")
    except Exception as e:  # noqa: BLE001 - the publish itself has succeeded or failed already
        logger.warning("could not delete the staging branch %s of %s: %s", name, repo_id, hub_error(e, "deleting"))


def _move_branch(api: Any, repo_id: str, branch: str, head: str | None, staged: str, adds: list[Any],
                 dels: list[Any], msg: str, desc: str) -> tuple[str, str]:
    """Commit the verified operations on ``branch`` on top of ``head``; check the result is the staged tree."""
    from huggingface_hub.errors import HfHubHTTPError

    again = []
    for op in adds:  # the same files, already uploaded: no re-hash, no re-upload
        op2 = copy.copy(op)
        op2._is_committed = False
        again.append(op2)
    try:
        info_c = api.create_commit(repo_id, operations=[*again, *(copy.copy(d) for d in dels)], commit_message=msg,
                                   commit_description=desc, repo_type="dataset", revision=branch,
                                   parent_commit=head)
    except HfHubHTTPError as e:
        err = hub_error(e, f"moving {repo_id}@{branch} to the verified release")
        raise HubAccessError(f"{err} -- {branch!r} still points at {head}; the verified release is commit {staged}; "
                             "re-run publish") from None

    def tree(rev: str) -> dict[str, str | None]:
        return {p: getattr(f, "blob_id", None) for p, f in _remote_files(api, repo_id, rev).items()}

    if tree(info_c.oid) != tree(staged):
        raise HubAccessError(f"{repo_id}@{branch}: commit {info_c.oid} does not hold the verified tree of {staged} "
                             "(the branch changed meanwhile?); check the branch and re-run publish")
    return info_c.oid, info_c.commit_url


def _batches(items: list[Any], max_files: int, max_bytes: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    size = 0
    for it in items:
        n = it.upload_info.size
        if batch and (len(batch) >= max_files or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(it)
        size += n
    if batch:
        yield batch


def publish_release(
    folder: str | Path,
    repo_id: str,
    *,
    branch: str = "main",
    tag: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    private: bool | None = None,
    gated: Literal["auto", "manual"] | bool | None = None,
    dry_run: bool = False,
    verify: Callable[..., Any] | bool = True,
    commit_message: str | None = None,
    commit_description: str | None = None,
    delete: bool = True,
    batch_files: int = 64,
    batch_bytes: int = 2 << 30,
) -> PublishReport:
    """Publish ``folder`` to the dataset repo ``repo_id`` on ``branch``; verify; tag.

    Args:
        private: for a new repo, whether it is private (default public); for an existing repo, ``None``
            leaves visibility unchanged.
        gated: ``"auto"``/``"manual"`` gate the repo, ``False`` ungates it, ``None`` leaves it.
        verify: ``True`` loads every README config back (see :func:`verify_release`); ``False`` skips;
            a callable ``verify(repo_id=, revision=, folder=, api=)`` returning a bool or a
            :class:`Verification` replaces the default check.
        delete: delete remote files that the folder no longer has (``.gitattributes`` is kept).

    Returns a :class:`PublishReport`. Raises :class:`PublishTargetError` on bad names,
    :class:`~radgenome_hf.errors.HubAccessError` when the Hub refuses (the branch is then unchanged),
    :class:`PublishVerificationError` when the pushed revision does not load back (it is not tagged).

    Example (against the local test server)::

        with HubServer() as hub:
            report = publish_release("release/", "org/radgenome", branch="staging", tag="v1.0",
                                     endpoint=hub.endpoint, token=hub.token)
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from tqdm.auto import tqdm

    validate_target(repo_id, branch=branch, tag=tag)
    if gated not in (None, False, "auto", "manual"):
        raise PublishTargetError(f"gated must be 'auto', 'manual', False or None, got {gated!r}")
    folder = Path(folder)
    local_files(folder)
    if (folder / "README.md").is_file():
        _card_configs(folder)  # a broken card fails here, before any upload
    _read_manifest(folder)  # a malformed manifest fails here too
    api = HfApi(endpoint=endpoint, token=token)

    # 1. repo, settings, refs
    created_repo = created_branch = False
    try:
        try:
            info = api.dataset_info(repo_id)
            repo_exists = True
        except RepositoryNotFoundError:
            info, repo_exists = None, False
        if not dry_run:
            if not repo_exists:
                api.create_repo(repo_id, repo_type="dataset", private=bool(private), exist_ok=True)
                created_repo = True
            settings: dict[str, Any] = {}
            if gated is not None and (info is None or (info.gated or False) != gated):
                settings["gated"] = gated
            if private is not None and repo_exists and bool(info.private) != private:
                settings["private"] = private
            if settings:
                api.update_repo_settings(repo_id, repo_type="dataset", **settings)
        refs = api.list_repo_refs(repo_id, repo_type="dataset") if (repo_exists or not dry_run) else None
    except HfHubHTTPError as e:
        raise hub_error(e, f"preparing {repo_id}") from None

    heads = {b.name: b.target_commit for b in refs.branches} if refs else {}
    tags = {t.name: t.target_commit for t in refs.tags} if refs else {}
    if not dry_run and branch not in heads:
        try:
            api.create_branch(repo_id, branch=branch, revision="main", repo_type="dataset", exist_ok=True)
            heads[branch] = api.dataset_info(repo_id, revision=branch).sha
            created_branch = True
        except HfHubHTTPError as e:
            raise hub_error(e, f"creating branch {branch!r} of {repo_id}") from None
    head = heads.get(branch, heads.get("main"))

    # 2. plan
    remote = _remote_files(api, repo_id, head)
    plan = PublishPlan(repo_id, branch, head, _diff(folder, remote, delete=delete), repo_exists, branch in heads)
    counts = plan.counts()
    if tag is not None and tag in tags and (plan.has_changes or tags[tag] != head):
        raise PublishTargetError(f"tag {tag!r} already exists on {repo_id} at {tags[tag]}; choose a new "
                                 "version tag (tags are immutable releases)")
    report = PublishReport(
        repo_id, branch, commit=None if dry_run else head, parent=head, dry_run=dry_run,
        uploaded_files=counts["add"]["files"] + counts["update"]["files"],
        uploaded_bytes=counts["add"]["bytes"] + counts["update"]["bytes"],
        skipped_files=counts["unchanged"]["files"], skipped_bytes=counts["unchanged"]["bytes"],
        deleted_files=counts["delete"]["files"], created_repo=created_repo, created_branch=created_branch,
        plan=plan)
    logger.info(plan.summary())
    if dry_run:
        return report

    # 3. stage (upload, then one commit on a staging branch), 4. verify there, 5. move the branch
    msg = commit_message or (f"Publish release {tag}" if tag else "Publish release")
    desc = commit_description if commit_description is not None else plan.summary(max_files=50)
    revision = head
    if plan.has_changes:
        adds = []
        for c in plan.to_upload:
            op = CommitOperationAdd(path_in_repo=c.path, path_or_fileobj=c.local_path)
            op.upload_info.sha256 = bytes.fromhex(c.sha256)  # already hashed while planning
            adds.append(op)
        dels = [CommitOperationDelete(path_in_repo=c.path, is_folder=False) for c in plan.of("delete")]
        staging = f"publish-staging-{secrets.token_hex(6)}" if verify is not False else None
        target = staging or branch
        try:
            if staging is not None:
                api.create_branch(repo_id, branch=staging, revision=head, repo_type="dataset")
            with tqdm(total=sum(op.upload_info.size for op in adds), unit="B", unit_scale=True,
                      desc="uploading", disable=None) as bar:
                for batch in _batches(adds, batch_files, batch_bytes):
                    api.preupload_lfs_files(repo_id, additions=batch, repo_type="dataset", revision=target)
                    bar.update(sum(op.upload_info.size for op in batch))
            info_c = api.create_commit(repo_id, operations=[*adds, *dels], commit_message=msg,
                                       commit_description=desc, repo_type="dataset", revision=target,
                                       parent_commit=head)
        except HfHubHTTPError as e:
            _drop_branch(api, repo_id, staging)
            err = hub_error(e, f"pushing to {repo_id}@{target}")
            raise HubAccessError(f"{err} -- nothing was committed: {branch!r} still points at {head}; re-run "
                                 "publish to resume (uploaded large files are reused)") from None
        revision = info_c.oid
        if staging is None:
            report.commit, report.url = info_c.oid, info_c.commit_url
    try:
        if verify is not False:
            report.verification = _run_verify(verify, repo_id, revision, folder, api, endpoint, token)
            if not report.verification.ok:
                raise PublishVerificationError(
                    f"{repo_id}@{revision} did not verify, so {branch!r} was not moved (it still points at "
                    f"{head}) and nothing was tagged:\n" + "\n".join(
                        f"  - {e}" for e in report.verification.errors), report)
            if plan.has_changes:
                report.commit, report.url = _move_branch(api, repo_id, branch, head, revision, adds, dels, msg, desc)
    finally:
        if plan.has_changes:
            _drop_branch(api, repo_id, staging)
    revision = report.commit

    # 6. tag
    if tag is not None:
        try:
            if tags.get(tag) != revision:
                api.create_tag(repo_id, tag=tag, revision=revision, repo_type="dataset",
                               tag_message=commit_message or f"Release {tag}")
        except HfHubHTTPError as e:
            raise hub_error(e, f"tagging {repo_id}@{revision} as {tag!r}") from None
        report.tag = tag
    logger.info(report.summary())
    return report
