"""The one gateway to the Hugging Face Hub: ``hf://`` URLs, file fetches into the HF cache, one error translator.

Everything the package reads from the Hub goes through here (``huggingface_hub`` does the HTTP, the token
handling and the resumable cache); every Hub failure becomes a :class:`~radgenome_hf.errors.HubAccessError` that
says what to do next and never carries a token.

>>> parse_hf_url("hf://datasets/org/repo@v1.0/dataset/train/a.nii.gz")
HfUrl(repo_id='org/repo', revision='v1.0', path='dataset/train/a.nii.gz', repo_type='dataset')
>>> local_path("/data/a.nii.gz")
'/data/a.nii.gz'
>>> hf_url("org/repo", "masks/a.parquet", "0123456789abcdef0123456789abcdef01234567")
'hf://datasets/org/repo@0123456789abcdef0123456789abcdef01234567/masks/a.parquet'
>>> pin_url("hf://datasets/org/repo@0123456789abcdef0123456789abcdef01234567/volumes/a.zarr")
'hf://datasets/org/repo@0123456789abcdef0123456789abcdef01234567/volumes/a.zarr'

Besides whole-file fetches, :func:`read_range` reads a byte range of a Hub file (one HTTP ``Range`` GET on the
commit the revision resolves to), :func:`cached_file` finds a file already in the Hugging Face cache without the
network, and :func:`list_files` / :func:`file_sizes` size files from the Hub's tree and paths-info without
downloading them.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Mapping, NamedTuple

from ..errors import HubAccessError

__all__ = ["CTRATE_REPO", "HfUrl", "cached_file", "fetch", "file_sizes", "hf_url", "hub_error", "is_offline", "is_url",
           "list_files", "local_path", "parse_hf_url", "pin_url", "read_range", "resolve_revision"]

CTRATE_REPO = "ibrahimhamamci/CT-RATE"


class HfUrl(NamedTuple):
    """The parts of ``hf://<type>s/<org>/<name>[@<revision>]/<path>``."""

    repo_id: str
    revision: str | None
    path: str
    repo_type: str = "dataset"


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``hf://…``, ``https://…``, ``file://…``) rather than a plain path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def parse_hf_url(url: str) -> HfUrl:
    """Split an ``hf://datasets/…`` URL; other repo types are refused (releases are dataset repos)."""
    rest = url[len("hf://"):] if url.startswith("hf://") else None
    if rest is None or not rest.startswith("datasets/"):
        raise HubAccessError(f"{url}: only hf://datasets/<org>/<name>[@<revision>]/<path> URLs are supported")
    parts = rest[len("datasets/"):].split("/", 2)
    if len(parts) < 2:
        raise HubAccessError(f"{url}: expected hf://datasets/<org>/<name>[@<revision>]/<path>")
    org, name_rev = parts[0], parts[1]
    name, _, revision = name_rev.partition("@")
    return HfUrl(f"{org}/{name}", revision or None, parts[2] if len(parts) > 2 else "")


def hf_url(repo_id: str, path: str, revision: str | None = None) -> str:
    """The ``hf://datasets/…`` URL of a file of a dataset repo (at ``revision`` when given)."""
    return f"hf://datasets/{repo_id}{'@' + revision if revision else ''}/{path}"


def is_offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE=1``): then only the local cache is read."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_commits: dict[tuple[str, str, str | None], str] = {}
_fetched: dict[str, str] = {}
_lock = threading.Lock()


def resolve_revision(repo_id: str, revision: str | None, token: Any = None, repo_type: str = "dataset") -> str | None:
    """The commit a branch or tag (``None``: the default branch) points at, asked of the Hub once per process and
    revision; a 40-hex commit is returned as it is. Offline or when the Hub cannot say, the revision as given
    (the Hugging Face cache then resolves it without the network).

    >>> resolve_revision("org/repo", "0123456789abcdef0123456789abcdef01234567")
    '0123456789abcdef0123456789abcdef01234567'
    """
    if revision is not None and _COMMIT.match(revision):
        return revision
    key = (repo_type, repo_id, revision)
    with _lock:
        hit = _commits.get(key)
    if hit is not None:
        return hit
    from huggingface_hub import HfApi, constants

    sha = revision
    if not constants.HF_HUB_OFFLINE:
        try:
            sha = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, token=token).sha or revision
        except Exception:  # noqa: BLE001 - the download that follows reports the real problem, in words
            sha = revision
    with _lock:
        _commits[key] = sha  # type: ignore[assignment]
    return sha


def fetch(url: str, token_per_repo_id: Mapping[str, Any] | None = None, *, tqdm_class: Any = None) -> str:
    """Download one file of an ``hf://`` URL into the Hugging Face cache (resumable) and return its local path.

    The revision is resolved to a commit once per process (:func:`resolve_revision`), and a file already fetched
    by this process, or in the cache at that commit, costs no request: rows of one volume ask the Hub nothing.
    ``tqdm_class`` receives the transfer's progress (``huggingface_hub``'s hook).
    """
    with _lock:
        hit = _fetched.get(url)
    if hit is not None and os.path.exists(hit):
        return hit
    from huggingface_hub import hf_hub_download

    u = parse_hf_url(url)
    token = (token_per_repo_id or {}).get(u.repo_id)
    try:
        revision = resolve_revision(u.repo_id, u.revision, token, u.repo_type)
        path = hf_hub_download(u.repo_id, u.path, repo_type=u.repo_type, revision=revision, token=token,
                               tqdm_class=tqdm_class)
    except Exception as exc:  # noqa: BLE001 - every failure gets a message that says what to do
        raise hub_error(exc, f"fetching {url}") from exc
    with _lock:
        _fetched[url] = path
    return path


def local_path(path: str, token_per_repo_id: Mapping[str, Any] | None = None) -> str:
    """A local file for a path or an ``hf://`` URL (fetched once into the Hugging Face cache)."""
    return fetch(path, token_per_repo_id) if path.startswith("hf://") else path


def cached_file(url: str) -> str | None:
    """The local path of an ``hf://`` file already in the Hugging Face cache at its revision (a branch or tag is
    looked up in the cache's refs), or ``None``; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    u = parse_hf_url(url)
    hit = try_to_load_from_cache(u.repo_id, u.path, revision=u.revision, repo_type=u.repo_type)
    return hit if isinstance(hit, str) else None


def pin_url(url: str, token: Any = None) -> str:
    """``url`` with its revision replaced by the commit it points at (:func:`resolve_revision`, once per process),
    so that every later read of it sees the same bytes; as given when the revision cannot be resolved (offline)."""
    u = parse_hf_url(url)
    sha = resolve_revision(u.repo_id, u.revision, token, u.repo_type)
    if sha is None or sha == u.revision:
        return url
    return f"hf://{u.repo_type}s/{u.repo_id}@{sha}/{u.path}"


def read_range(url: str, start: int | None, end: int | None = None, *, token: Any = None) -> tuple[bytes, int]:
    """(bytes ``[start, end)`` of an ``hf://`` file, the file's size): one HTTP ``Range`` GET on the commit the
    URL's revision resolves to. ``start < 0`` reads the last ``-start`` bytes, ``start=None`` the whole file (the
    size comes with them either way). No read-ahead: exactly the bytes asked for are transferred.

    This is the request ``huggingface_hub``'s ``HfFileSystem`` files make, sent through huggingface_hub's own HTTP
    session (retries, token headers), without the file system's repo-info and listing calls per file: a crop of a
    chunked volume or one structure of a masks shard costs only the ranges it reads. Safe from threads.
    Offline there is no network to read from: the error says to download the files first.
    """
    if is_offline():
        raise HubAccessError(f"reading {url}: the file is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                             "download it first (`radgenome-hf download REPO …`), or unset HF_HUB_OFFLINE")
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

    u = parse_hf_url(url)
    if start is None:
        rng = "bytes=0-"
    elif start < 0:
        rng = f"bytes={start}"
    else:
        rng = f"bytes={start}-{'' if end is None else end - 1}"
    try:
        rev = resolve_revision(u.repo_id, u.revision, token, repo_type=u.repo_type)
        r = http_backoff("GET", hf_hub_url(u.repo_id, u.path, repo_type=u.repo_type, revision=rev),
                         headers={**build_hf_headers(token=token), "Range": rng},
                         timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT)
        hf_raise_for_status(r)
    except Exception as exc:  # noqa: BLE001 - every failure gets a message that says what to do
        raise hub_error(exc, f"reading {rng} of {url}") from exc
    total = r.headers.get("Content-Range", "").rpartition("/")[2]
    if r.status_code != 206 or not total.isdigit():
        raise HubAccessError(f"reading {rng} of {url}: the server did not answer with a byte range "
                             f"(HTTP {r.status_code}); a Hub mirror without Range support cannot serve partial reads")
    return r.content, int(total)


def list_files(repo_id: str, revision: str, folder: str, *, recursive: bool = True) -> dict[str, int]:
    """``{path: size}`` of the files under ``folder`` of a dataset repo at ``revision`` (the Hub's tree listing;
    nothing is downloaded). A missing folder is an empty dict."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = HfApi().list_repo_tree(repo_id, folder, recursive=recursive, revision=revision,
                                         repo_type="dataset")
        return {e.path: int(e.size) for e in entries if isinstance(e, RepoFile)}
    except EntryNotFoundError:
        return {}
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, f"listing {repo_id}@{revision}/{folder}") from exc


def file_sizes(repo_id: str, revision: str, paths: list[str]) -> dict[str, int | None]:
    """``{path: size}`` for files, ``{path: None}`` for folders, from the Hub's paths-info (batched; no download).
    Paths the repo does not hold are left out."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    out: dict[str, int | None] = {}
    try:
        for i in range(0, len(paths), 500):
            for e in HfApi().get_paths_info(repo_id, paths[i:i + 500], revision=revision, repo_type="dataset"):
                out[e.path] = int(e.size) if isinstance(e, RepoFile) else None
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, f"sizing {len(paths)} files of {repo_id}@{revision}") from exc
    return out


def hub_error(exc: BaseException, what: str) -> HubAccessError:
    """The :class:`HubAccessError` for a failed Hub operation ``what``: the cause in words and what to do.

    Never includes request headers (tokens).

    >>> str(hub_error(TimeoutError("read timed out"), "listing org/repo"))
    'listing org/repo failed: TimeoutError (read timed out); check the connection, or set HF_HUB_OFFLINE=1 and use local files'
    """
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    server_msg = (getattr(exc, "server_message", None) or "").strip()
    if isinstance(exc, GatedRepoError):
        hint = ("the dataset is gated: accept its terms on the dataset page while logged in (https://huggingface.co/"
                f"datasets/{CTRATE_REPO} for CT-RATE), then pass token=… or set HF_TOKEN (`hf auth login`)")
    elif isinstance(exc, RepositoryNotFoundError):
        hint = ("repository not found, or private and no valid token was given: check the repo id and pass "
                "token=… or set HF_TOKEN")
    elif isinstance(exc, RevisionNotFoundError):
        hint = "no such revision (branch, tag or commit): check the name with `hf repo-files` or the Hub page"
    elif isinstance(exc, LocalEntryNotFoundError):
        hint = ("the file is not in the local Hugging Face cache and the Hub cannot be reached (offline mode or no "
                "network): connect, or unset HF_HUB_OFFLINE, or use a local copy")
    elif isinstance(exc, (EntryNotFoundError, FileNotFoundError)):
        hint = "no such file at this revision: the release is incomplete or the path is wrong"
    elif status == 412:
        hint = "the branch moved since the plan was made (someone else pushed): re-run publish"
    elif status in (401, 403):
        hint = "the token is missing or has no access to this repo (token=…, --token or HF_TOKEN)"
    elif isinstance(exc, HfHubHTTPError):
        hint = f"HTTP {status}"
    else:
        hint = (f"{type(exc).__name__} ({str(exc)[:200]}); check the connection, or set HF_HUB_OFFLINE=1 and use "
                "local files")
    msg = f"{what} failed: {hint}"
    if server_msg:
        msg += f" (server said: {server_msg[:300]})"
    return HubAccessError(msg)
