"""The one gateway to the Hugging Face Hub: ``hf://`` URLs, file fetches into the HF cache, one error translator.

Everything the package reads from the Hub goes through here (``huggingface_hub`` does the HTTP, the token
handling and the resumable cache); every Hub failure becomes a :class:`~radgenome_hf.errors.HubAccessError` that
says what to do next and never carries a token.

>>> parse_hf_url("hf://datasets/org/repo@v1.0/dataset/train/a.nii.gz")
HfUrl(repo_id='org/repo', revision='v1.0', path='dataset/train/a.nii.gz', repo_type='dataset')
>>> local_path("/data/a.nii.gz")
'/data/a.nii.gz'
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

from ..errors import HubAccessError

__all__ = ["CTRATE_REPO", "HfUrl", "fetch", "hub_error", "is_url", "local_path", "parse_hf_url"]

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


def fetch(url: str, token_per_repo_id: Mapping[str, Any] | None = None) -> str:
    """Download one file of an ``hf://`` URL into the Hugging Face cache (resumable) and return its local path.

    A file already in the cache at a pinned commit costs no request.
    """
    from huggingface_hub import hf_hub_download

    u = parse_hf_url(url)
    token = (token_per_repo_id or {}).get(u.repo_id)
    try:
        return hf_hub_download(u.repo_id, u.path, repo_type=u.repo_type, revision=u.revision, token=token)
    except Exception as exc:  # noqa: BLE001 - every failure gets a message that says what to do
        raise hub_error(exc, f"fetching {url}") from exc


def local_path(path: str, token_per_repo_id: Mapping[str, Any] | None = None) -> str:
    """A local file for a path or an ``hf://`` URL (fetched once into the Hugging Face cache)."""
    return fetch(path, token_per_repo_id) if path.startswith("hf://") else path


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
    elif isinstance(exc, EntryNotFoundError):
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
