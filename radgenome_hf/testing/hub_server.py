"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests and examples.

It implements the endpoints that ``huggingface_hub`` 2.4 and ``datasets`` 5.2 really call for
dataset repos (read from the installed client code), with real semantics where they matter for
publishing: commits with sha-like ids and parents, branches / tags / PR refs, a ``parentCommit``
check (412 on mismatch), LFS objects stored content-addressed by sha256 (an object uploaded once
is reported present to the LFS batch call afterwards, even if no commit landed), private and gated
repos that refuse requests without the owner's token like the Hub, and a request log with
counters for assertions.

Endpoints: ``GET /api/whoami-v2``; ``POST /api/repos/create``; ``DELETE /api/repos/delete``;
``GET /api/datasets/{id}[/revision/{rev}]``; ``PUT /api/datasets/{id}/settings``;
``POST /api/datasets/{id}/preupload/{rev}``; ``POST /datasets/{id}.git/info/lfs/objects/batch``
(basic transfer; upload and verify hrefs point back at this server); ``POST /api/validate-yaml``;
``POST /api/datasets/{id}/commit/{rev}[?create_pr=1]`` (ndjson: header, file, lfsFile,
deletedFile, deletedFolder); ``GET /api/datasets/{id}/tree/{rev}[/{path}]?recursive=&expand=``;
``POST /api/datasets/{id}/paths-info/{rev}``; ``GET|HEAD /datasets/{id}/resolve/{rev}/{path}``
(Range GETs, ``X-Repo-Commit`` / ``ETag`` / ``X-Linked-Size`` headers, no body on HEAD);
``GET /api/datasets/{id}/refs``; ``POST|DELETE /api/datasets/{id}/branch/{name}``;
``POST /api/datasets/{id}/tag/{rev}``, ``DELETE /api/datasets/{id}/tag/{name}``;
``GET /api/datasets/{id}/commits/{rev}``; ``GET /api/agent-harnesses``. Models repos (no
``datasets/`` prefix) work the same way. No Xet: ``/xet-write-token`` answers 501, so clients must
run with ``HF_HUB_DISABLE_XET=1`` (or ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``).

Auth: ``HubServer(token=...)`` is the owner token (user ``owner``, default ``radgenome-test``); the
owner may write to any namespace. ``server.add_user(name, token)`` adds another user who may write
only to its own namespace. Without a token, a private repo answers 401 ``RepoNotFound`` to
everything and a gated repo answers 401 ``GatedRepo`` to file downloads (403 for a user with a token
who was not granted access: ``server.grant_access(repo_id, user)``), which ``huggingface_hub`` maps
to ``RepositoryNotFoundError`` / ``GatedRepoError``. Tokens are never written to the request log.

Using it — what works reliably:

* **Another process** (most faithful: what a user's shell sees). Set, before ``huggingface_hub`` or
  ``datasets`` is imported: ``HF_ENDPOINT=server.endpoint``, ``HF_TOKEN=<token>``,
  ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_OFFLINE=0``, a fresh ``HF_HOME``; ``server.client_env(home)``
  returns exactly that dict. In that process also set ``datasets.config.USE_PARQUET_EXPORT = False``
  (otherwise datasets asks ``datasets-server.<host>`` for exported infos).
* **In process**, for ``huggingface_hub`` calls: pass ``endpoint=server.endpoint`` and ``token=`` to
  ``HfApi`` / ``hf_hub_download`` / ``HfFileSystem`` and make sure
  ``huggingface_hub.constants.HF_HUB_DISABLE_XET`` is True and ``HF_HUB_OFFLINE`` is False (they are
  read once, at import: patch the attributes, as ``server.patch_client()`` does). In-process
  ``datasets.load_dataset`` from this server needs more constants patched
  (``datasets.config.HF_ENDPOINT``/``HUB_DATASETS_URL``, ``huggingface_hub.constants.ENDPOINT``/
  ``HUGGINGFACE_CO_URL_TEMPLATE``); ``patch_client()`` does that too, but a subprocess is simpler.

>>> from huggingface_hub import HfApi
>>> with HubServer() as hub, hub.patch_client():
...     api = HfApi(endpoint=hub.endpoint, token=hub.token)
...     _ = api.create_repo("org/demo", repo_type="dataset")
...     api.list_repo_refs("org/demo", repo_type="dataset").branches[0].name
'main'
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubServer", "RequestRecord"]

_GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.lz4 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*.nii filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.jpg filter=lfs diff=lfs merge=lfs -text
# Audio / video files
*.mp3 filter=lfs diff=lfs merge=lfs -text
*.wav filter=lfs diff=lfs merge=lfs -text
"""
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub's rule: files of 10 MB and more go to LFS
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class _Entry:
    """One file in a commit's tree."""

    size: int
    sha256: str  # content sha256 (the LFS oid, and the key of the blob store)
    lfs: bool
    blob_id: str  # the git oid: of the LFS pointer for LFS files, of the content otherwise


@dataclass
class _Commit:
    sha: str
    parents: list[str]
    files: dict[str, _Entry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    owner: str
    private: bool = False
    gated: str | bool = False
    created: str = field(default_factory=_now)
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)  # refs/pr/N -> head sha (index N-1)
    lfs_oids: set[str] = field(default_factory=set)
    granted: set[str] = field(default_factory=set)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev.startswith("refs/heads/") and rev[11:] in self.branches:
            return self.branches[rev[11:]]
        if rev.startswith("refs/tags/") and rev[10:] in self.tags:
            return self.tags[rev[10:]]
        m = re.match(r"^refs/pr/(\d+)$", rev)
        if m and 0 < int(m.group(1)) <= len(self.prs):
            return self.prs[int(m.group(1)) - 1]
        if _HEX40.match(rev) and rev in self.commits:
            return rev
        return None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (no headers: tokens never reach the log)."""

    method: str
    path: str
    kind: str
    status: int
    repo_id: str | None
    bytes_in: int
    bytes_out: int
    authenticated: bool


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubServer:
    """A threaded Hub-compatible server on ``127.0.0.1:<free port>``; use as a context manager.

    Args:
        token: the owner's token (full access everywhere).
        user: the owner's user name.
        storage: ``"memory"`` (default), ``"disk"`` (a temp dir removed on :meth:`stop`) or a folder
            path for the content-addressed blob store.
    """

    def __init__(self, token: str = "hf_radgenome_test_owner_token", user: str = "radgenome-test",
                 storage: str | Path = "memory") -> None:
        self.token = token
        self.user = user
        self._tokens: dict[str, str] = {token: user}
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, bytes] = {}
        self._tmpdir: str | None = None
        if storage == "memory":
            self._blob_dir: Path | None = None
        elif storage == "disk":
            self._tmpdir = tempfile.mkdtemp(prefix="radgenome-hub-")
            self._blob_dir = Path(self._tmpdir)
        else:
            self._blob_dir = Path(storage)
            self._blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.requests: list[RequestRecord] = []
        self._failures: list[list[Any]] = []  # [kind, status, remaining, path part or None]
        self._cuts: list[list[Any]] = []  # [path part, bytes sent before the connection drops, remaining]
        self._holds: list[_Hold] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not running: call start() or use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="radgenome-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- test helpers
    def add_user(self, name: str, token: str) -> None:
        """Register another user (write access to its own namespace only)."""
        with self._lock:
            self._tokens[token] = name

    def grant_access(self, repo_id: str, user: str, repo_type: str = "dataset") -> None:
        """Accept ``user``'s access request to a gated repo."""
        with self._lock:
            self._repo(repo_type, repo_id).granted.add(user)

    def fail_next(self, kind: str, status: int = 500, times: int = 1, path_contains: str | None = None) -> None:
        """Make the next ``times`` requests of ``kind`` (e.g. ``"commit"``; ``"resolve_get"`` for file GETs only,
        ``"resolve"`` for their HEADs too), of a path containing ``path_contains`` when given, fail with
        ``status``."""
        with self._lock:
            self._failures.append([kind, status, times, path_contains])

    def cut_next(self, path_contains: str, after_bytes: int, times: int = 1) -> None:
        """Make the next ``times`` file GETs (``/resolve/``) of a path containing ``path_contains`` send their
        headers (with the full ``Content-Length``) and only ``after_bytes`` bytes of the body, then drop the
        connection: a network failure in the middle of a download."""
        with self._lock:
            self._cuts.append([path_contains, after_bytes, times])

    def hold(self, kind: str) -> "_Hold":
        """Block the next request of ``kind`` until ``.release()``; ``.arrived`` is set when it comes in.

        Lets a test kill a client at a precise point, e.g. ``hold("validate_yaml")``: every large file of
        a ``create_commit`` has been uploaded, and the commit itself has not been sent yet.
        """
        h = _Hold(kind)
        with self._lock:
            self._holds.append(h)
        return h

    def client_env(self, hf_home: str | Path, token: str | None = None) -> dict[str, str]:
        """Environment variables that point a fresh process's huggingface_hub / datasets here."""
        return {"HF_ENDPOINT": self.endpoint, "HF_TOKEN": token or self.token, "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(hf_home),
                "HF_DATASETS_CACHE": str(Path(hf_home) / "datasets"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

    @contextlib.contextmanager
    def patch_client(self) -> Iterator[None]:
        """Point this process's huggingface_hub (and datasets, if imported here) at the server, then restore."""
        import huggingface_hub.constants as hc

        saved: list[tuple[Any, str, Any]] = []

        def setattr_saved(obj: Any, name: str, value: Any) -> None:
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

        setattr_saved(hc, "HF_HUB_DISABLE_XET", True)
        setattr_saved(hc, "HF_HUB_OFFLINE", False)
        setattr_saved(hc, "ENDPOINT", self.endpoint)
        setattr_saved(hc, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        try:
            import datasets.config as dc
        except ImportError:  # pragma: no cover
            dc = None
        if dc is not None:
            setattr_saved(dc, "HF_ENDPOINT", self.endpoint)
            setattr_saved(dc, "HUB_DATASETS_URL", self.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
            setattr_saved(dc, "HF_HUB_OFFLINE", False)
            setattr_saved(dc, "USE_PARQUET_EXPORT", False)
        try:
            yield
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)

    def counts(self, repo_id: str | None = None) -> Counter:
        """Requests per kind (``"lfs_upload"``, ``"commit"``, ``"preupload"``, ``"resolve"``…)."""
        with self._lock:
            return Counter(r.kind for r in self.requests if repo_id is None or r.repo_id == repo_id)

    def uploaded_bytes(self, repo_id: str | None = None) -> int:
        """Bytes received by LFS upload PUTs and as inline (base64) commit content."""
        with self._lock:
            return sum(r.bytes_in for r in self.requests
                       if r.kind in ("lfs_upload", "commit") and (repo_id is None or r.repo_id == repo_id))

    def downloaded_bytes(self, repo_id: str | None = None, path_contains: str | None = None) -> int:
        """Bytes the server sent as file content (``/resolve/`` GETs, ranged or whole), optionally only for
        request paths containing ``path_contains`` (e.g. a file's repo path): what a client really transferred."""
        with self._lock:
            return sum(r.bytes_out for r in self.requests
                       if r.kind == "resolve" and r.method == "GET" and (repo_id is None or r.repo_id == repo_id)
                       and (path_contains is None or path_contains in unquote(r.path)))

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> str | None:
        """The commit sha ``revision`` points at (``None`` if the ref does not exist)."""
        with self._lock:
            return self._repo(repo_type, repo_id).resolve(revision)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """The content of every file at ``revision``."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(revision)
            return {p: self._get_blob(e.sha256) for p, e in repo.commits[sha].files.items()}

    # ----------------------------------------------------------------------------- storage
    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if self._blob_dir is None:
            self._blobs.setdefault(sha, data)
        else:
            p = self._blob_dir / sha
            if not p.exists():
                tmp = p.with_name(p.name + f".tmp{threading.get_ident()}")
                tmp.write_bytes(data)
                tmp.replace(p)
        return sha

    def _has_blob(self, sha: str) -> bool:
        return sha in self._blobs if self._blob_dir is None else (self._blob_dir / sha).exists()

    def _get_blob(self, sha: str) -> bytes:
        return self._blobs[sha] if self._blob_dir is None else (self._blob_dir / sha).read_bytes()

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _entry(self, data: bytes, lfs: bool) -> _Entry:
        sha = self._put_blob(data)
        return _Entry(len(data), sha, lfs, git_blob_sha1(_lfs_pointer(sha, len(data)) if lfs else data))

    def _new_commit(self, repo: _Repo, parent: str | None, files: dict[str, _Entry], title: str,
                    message: str, author: str) -> _Commit:
        listing = json.dumps({p: e.blob_id for p, e in sorted(files.items())})
        seed = f"{parent}\n{listing}\n{title}\n{message}\n{author}\n{time.time_ns()}".encode()
        sha = hashlib.sha1(seed).hexdigest()
        c = _Commit(sha, [parent] if parent else [], dict(files), title, message, author, _now())
        repo.commits[sha] = c
        return c


class _Hold:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.arrived = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()


_REPO_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "RadGenomeTestHub/1.0"
    # headers and body are two writes: with Nagle on, the body waits for the client's delayed ACK (~40 ms a
    # request on loopback), which no real Hub does; range-read timings would measure that instead
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if getattr(self, "_body_cache", None) is not None:
            return self._body_cache
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._body_cache = body
        return body

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise _HttpError(400, "request body is not JSON")

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = auth[7:].strip()
        user = self.hub._tokens.get(token)
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _send(self, status: int, payload: Any = None, *, headers: dict[str, str] | None = None,
              raw: bytes | None = None, content_type: str = "application/json") -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        headers = dict(headers or {})
        length = headers.pop("Content-Length", None) or str(len(body))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", length)
        self._bytes_out = 0 if self.command == "HEAD" else len(body)
        self._status = status
        self._record()  # before the client can see the answer: a test that checks the log right after sees it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _record(self) -> None:
        if self._logged:
            return
        self._logged = True
        with self.hub._lock:
            self.hub.requests.append(RequestRecord(
                self.command, urlsplit(self.path).path, self._kind, self._status, self._repo_id,
                len(self._body_cache or b""), self._bytes_out, self._authed))

    def _dispatch(self) -> None:
        self._body_cache: bytes | None = None
        self._status, self._bytes_out, self._kind, self._repo_id = 500, 0, "unknown", None
        self._authed = "Authorization" in self.headers
        self._logged = False
        try:
            self._route()
        except _HttpError as e:
            self._body()  # drain the request body (keep-alive)
            h = {"X-Error-Message": e.message}
            if e.code:
                h["X-Error-Code"] = e.code
            self._send(e.status, {"error": e.message, **e.extra}, headers=h)
        except Exception as e:  # pragma: no cover - a server bug must not hang the client
            self._body()
            self._send(500, {"error": f"test hub internal error: {type(e).__name__}: {e}"})
        finally:
            self._record()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    def _maybe_fail(self, *also: str) -> None:
        kinds = (self._kind, *also)
        with self.hub._lock:
            hold = next((h for h in self.hub._holds if h.kind in kinds), None)
            if hold is not None:
                self.hub._holds.remove(hold)
        if hold is not None:
            hold.arrived.set()
            hold._released.wait(timeout=60)
        with self.hub._lock:
            for f in self.hub._failures:
                if f[0] in kinds and f[2] > 0 and (f[3] is None or f[3] in unquote(self.path)):
                    f[2] -= 1
                    raise _HttpError(f[1], f"injected failure of {f[0]}")

    # ---------------------------------------------------------------- routing
    def _route(self) -> None:
        url = urlsplit(self.path)
        segs = url.path.split("/")[1:]  # raw (still quoted) segments
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        m = self.command
        if segs[:2] == ["api", "whoami-v2"]:
            self._kind = "whoami"
            user = self._user()
            if user is None:
                raise _HttpError(401, "Invalid credentials in Authorization header")
            return self._send(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                                    "auth": {"type": "access_token",
                                             "accessToken": {"displayName": "test", "role": "write"}}})
        if segs[:2] == ["api", "agent-harnesses"]:
            self._kind = "agent_harnesses"
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if segs[:2] == ["api", "validate-yaml"]:
            self._kind = "validate_yaml"
            return self._validate_yaml()
        if segs[:2] == ["api", "repos"] and len(segs) == 3:
            self._kind = "repo_" + segs[2]
            if segs[2] == "create" and m == "POST":
                return self._create_repo()
            if segs[2] == "delete" and m == "DELETE":
                return self._delete_repo()
        if segs[:2] == ["_lfs", "upload"] and m == "PUT":
            self._kind = "lfs_upload"
            return self._lfs_upload(segs[2], segs[3], unquote(segs[4]) + "/" + unquote(segs[5]), segs[6])
        if segs[:2] == ["_lfs", "verify"] and m == "POST":
            self._kind = "lfs_verify"
            return self._lfs_verify(segs[2], unquote(segs[3]) + "/" + unquote(segs[4]))
        if segs and segs[0] == "api" and len(segs) >= 4 and segs[1] in _REPO_TYPES:
            rtype = _REPO_TYPES[segs[1]]
            repo_id = unquote(segs[2]) + "/" + unquote(segs[3])
            self._repo_id = repo_id
            rest = segs[4:]
            return self._api(m, rtype, repo_id, rest, q)
        # /datasets/ns/name.git/info/lfs/objects/batch  or  /ns/name.git/...  (models)
        gi = next((i for i, s in enumerate(segs) if s.endswith(".git")), None)
        if gi is not None and segs[gi + 1:] == ["info", "lfs", "objects", "batch"] and m == "POST":
            self._kind = "lfs_batch"
            rtype = _REPO_TYPES.get(segs[0], "model") if gi == 2 else "model"
            ns, name = segs[gi - 1], segs[gi][:-4]
            repo_id = unquote(ns) + "/" + unquote(name)
            self._repo_id = repo_id
            return self._lfs_batch(rtype, repo_id)
        # /datasets/ns/name/resolve/rev/path...   or  /ns/name/resolve/...
        off = 1 if segs and segs[0] in _REPO_TYPES else 0
        if len(segs) >= off + 5 and segs[off + 2] == "resolve" and m in ("GET", "HEAD"):
            self._kind = "resolve"
            rtype = _REPO_TYPES[segs[0]] if off else "model"
            repo_id = unquote(segs[off]) + "/" + unquote(segs[off + 1])
            self._repo_id = repo_id
            rev = unquote(segs[off + 3])
            path = unquote("/".join(segs[off + 4:]))
            return self._resolve(rtype, repo_id, rev, path)
        raise _HttpError(404, f"test hub: no route for {m} {url.path}")

    def _api(self, m: str, rtype: str, repo_id: str, rest: list[str], q: dict[str, str]) -> None:
        hub = self.hub
        head = rest[0] if rest else ""
        arg = unquote(rest[1]) if len(rest) > 1 else None
        if not rest and m == "GET" or head == "revision" and m == "GET":
            self._kind = "repo_info"
            return self._repo_info(rtype, repo_id, arg or "main", q)
        self._kind = {"preupload": "preupload", "commit": "commit", "tree": "tree", "paths-info": "paths_info",
                      "refs": "refs", "branch": "branch", "tag": "tag", "commits": "commits",
                      "settings": "settings", "xet-write-token": "xet_token",
                      "xet-read-token": "xet_token"}.get(head, head or "repo")
        if head in ("xet-write-token", "xet-read-token"):
            raise _HttpError(501, "this test hub does not implement Xet; set HF_HUB_DISABLE_XET=1")
        if head == "commit" and m == "POST":
            self._body()
        self._maybe_fail()  # any API kind (fail_next / hold); outside the lock: a held request must not block
        with hub._lock:
            repo = hub._repo(rtype, repo_id)
            self._check_read(repo)
            if head == "settings" and m == "PUT":
                self._check_write(repo)
                return self._settings(repo)
            if head == "preupload" and m == "POST":
                self._check_write(repo)
                return self._preupload(repo, arg or "main")
            if head == "commit" and m == "POST":
                self._check_write(repo)
                return self._commit(repo, arg or "main", q.get("create_pr") == "1")
            if head == "tree" and m == "GET":
                path = unquote("/".join(rest[2:])) if len(rest) > 2 else ""
                return self._tree(repo, arg or "main", path, q.get("recursive") in ("True", "true", "1"),
                                  q.get("expand") in ("True", "true", "1"))
            if head == "paths-info" and m == "POST":
                return self._paths_info(repo, arg or "main")
            if head == "refs" and m == "GET":
                return self._refs(repo, q.get("include_prs") == "1")
            if head == "branch" and arg:
                self._check_write(repo)
                return self._branch(repo, arg, m)
            if head == "tag" and arg:
                self._check_write(repo)
                return self._tag(repo, arg, m)
            if head == "commits" and m == "GET":
                return self._commits(repo, arg or "main")
        raise _HttpError(404, f"test hub: no route for {m} {self.path}")

    # ---------------------------------------------------------------- auth
    def _check_read(self, repo: _Repo) -> None:
        if repo.private:
            user = self._user()
            if user is None or (user != self.hub.user and user != repo.owner):
                raise _HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")

    def _check_download(self, repo: _Repo) -> None:
        self._check_read(repo)
        if repo.gated:
            user = self._user()
            if user is None:
                raise _HttpError(401, f"Access to dataset {repo.repo_id} is restricted. You must have access to "
                                      "it and be authenticated to access it. Please log in.", "GatedRepo")
            if user != self.hub.user and user != repo.owner and user not in repo.granted:
                raise _HttpError(403, f"Access to dataset {repo.repo_id} is restricted and you are not in the "
                                      "authorized list. Visit the dataset page to ask for access.", "GatedRepo")

    def _check_write(self, repo_or_ns: _Repo | str) -> str:
        user = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated to write (no token given)")
        ns = repo_or_ns.repo_id.split("/")[0] if isinstance(repo_or_ns, _Repo) else repo_or_ns
        if user != self.hub.user and user != ns:
            raise _HttpError(403, f"You don't have the rights to write to {ns}")
        return user

    # ---------------------------------------------------------------- handlers
    def _validate_yaml(self) -> None:
        import yaml

        body = self._json_body()
        self._maybe_fail()
        content = body.get("content", "")
        errors = []
        m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if m:
            try:
                data = yaml.safe_load(m.group(1))
                if data is not None and not isinstance(data, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as e:
                errors.append({"message": f"invalid YAML: {e}"})
        if errors:
            return self._send(400, {"errors": errors, "warnings": []})
        return self._send(200, {"errors": [], "warnings": []})

    def _create_repo(self) -> None:
        body = self._json_body()
        ns = body.get("organization") or self._user() or ""
        name = body.get("name", "")
        user = self._check_write(ns)
        rtype = body.get("type") or "model"
        repo_id = f"{ns}/{name}"
        self._repo_id = repo_id
        prefix = "" if rtype == "model" else rtype + "s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        with self.hub._lock:
            if (rtype, repo_id) in self.hub._repos:
                raise _HttpError(409, f"You already created this {rtype} repo", url=url)
            private = body.get("visibility") == "private" or bool(body.get("private"))
            repo = _Repo(repo_id, rtype, owner=user, private=private)
            c = self.hub._new_commit(repo, None, {".gitattributes": self.hub._entry(_GITATTRIBUTES.encode(), False)},
                                     "initial commit", "", user)
            repo.branches["main"] = c.sha
            self.hub._repos[(rtype, repo_id)] = repo
        return self._send(200, {"url": url, "name": repo_id, "id": c.sha})

    def _delete_repo(self) -> None:
        body = self._json_body()
        ns = body.get("organization") or self._user() or ""
        repo_id = f"{ns}/{body.get('name', '')}"
        self._repo_id = repo_id
        with self.hub._lock:
            repo = self.hub._repo(body.get("type") or "model", repo_id)
            self._check_write(repo)
            del self.hub._repos[(repo.repo_type, repo_id)]
        return self._send(200, {})

    def _rev(self, repo: _Repo, rev: str) -> _Commit:
        sha = repo.resolve(rev)
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[sha]

    def _repo_info(self, rtype: str, repo_id: str, rev: str, q: dict[str, str]) -> None:
        with self.hub._lock:
            repo = self.hub._repo(rtype, repo_id)
            self._check_read(repo)
            c = self._rev(repo, rev)
            siblings = []
            for p, e in sorted(c.files.items()):
                s: dict[str, Any] = {"rfilename": p}
                if q.get("blobs") in ("True", "true", "1"):
                    s.update(size=e.size, blobId=e.blob_id)
                    if e.lfs:
                        s["lfs"] = {"size": e.size, "sha256": e.sha256, "pointerSize": len(_lfs_pointer(e.sha256, e.size))}
                siblings.append(s)
            card = None
            if "README.md" in c.files:
                card = _card_data(self.hub._get_blob(c.files["README.md"].sha256))
            info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                    "author": repo_id.split("/")[0], "sha": c.sha, "private": repo.private, "gated": repo.gated,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": [], "createdAt": repo.created,
                    "lastModified": c.date, "siblings": siblings, "usedStorage": sum(e.size for e in c.files.values())}
            if card is not None:
                info["cardData"] = card
        return self._send(200, info)

    def _settings(self, repo: _Repo) -> None:
        body = self._json_body()
        if "gated" in body:
            if body["gated"] not in ("auto", "manual", False):
                raise _HttpError(400, "gated must be 'auto', 'manual' or false")
            repo.gated = body["gated"]
        if "visibility" in body:
            repo.private = body["visibility"] == "private"
        if "private" in body:
            repo.private = bool(body["private"])
        return self._send(200, {})

    def _lfs_patterns(self, c: _Commit) -> list[str]:
        e = c.files.get(".gitattributes")
        if e is None:
            return []
        pats = []
        for line in self.hub._get_blob(e.sha256).decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#") and "filter=lfs" in parts[1:]:
                pats.append(parts[0])
        return pats

    def _is_lfs(self, c: _Commit | None, path: str, size: int, sample: bytes) -> bool:
        if size >= _LFS_SIZE_THRESHOLD or b"\x00" in sample:
            return True
        name = path.rsplit("/", 1)[-1]
        for pat in self._lfs_patterns(c) if c is not None else []:
            if fnmatch.fnmatchcase(name if "/" not in pat else path, pat):
                return True
        return False

    def _preupload(self, repo: _Repo, rev: str) -> None:
        body = self._json_body()
        sha = repo.resolve(rev)
        c = repo.commits[sha] if sha else None
        out = []
        for f in body.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = self._is_lfs(c, f["path"], int(f.get("size", 0)), sample)
            existing = c.files.get(f["path"]) if c else None
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.blob_id
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        return self._send(200, {"files": out, "commitOid": sha})

    def _lfs_batch(self, rtype: str, repo_id: str) -> None:
        body = self._json_body()
        self._maybe_fail()
        with self.hub._lock:
            repo = self.hub._repo(rtype, repo_id)
            self._check_read(repo)
            if body.get("operation") == "upload":
                self._check_write(repo)
            objects = []
            for o in body.get("objects", []):
                oid, size = o["oid"], int(o["size"])
                item: dict[str, Any] = {"oid": oid, "size": size}
                present = oid in repo.lfs_oids and self.hub._has_blob(oid)
                if body.get("operation") == "upload":
                    if not present:
                        base = f"{self.hub.endpoint}/_lfs"
                        rid = "/".join(quote(s, safe="") for s in repo_id.split("/"))
                        item["authenticated"] = True
                        item["actions"] = {
                            "upload": {"href": f"{base}/upload/{rtype}/{size}/{rid}/{oid}", "header": {}},
                            "verify": {"href": f"{base}/verify/{rtype}/{rid}", "header": {}},
                        }
                elif present:
                    item["actions"] = {"download": {"href": f"{self.hub.endpoint}/_lfs/download/{oid}"}}
                else:
                    item["error"] = {"code": 404, "message": "Object does not exist"}
                objects.append(item)
        return self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                          content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, rtype: str, size: str, repo_id: str, oid: str) -> None:
        self._repo_id = repo_id
        data = self._body()
        self._maybe_fail()
        if hashlib.sha256(data).hexdigest() != oid or len(data) != int(size):
            raise _HttpError(400, "uploaded content does not match its oid/size")
        with self.hub._lock:
            repo = self.hub._repo(_REPO_TYPES.get(rtype + "s", rtype), repo_id)
            self.hub._put_blob(data)
            repo.lfs_oids.add(oid)
        return self._send(200, None, raw=b"")

    def _lfs_verify(self, rtype: str, repo_id: str) -> None:
        self._repo_id = repo_id
        body = self._json_body()
        with self.hub._lock:
            repo = self.hub._repo(rtype, repo_id)
            ok = body.get("oid") in repo.lfs_oids
        if not ok:
            raise _HttpError(404, "object not found")
        return self._send(200, {})

    def _commit(self, repo: _Repo, rev: str, create_pr: bool) -> None:
        lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        base_sha = repo.resolve(rev)
        if base_sha is None:
            raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if not create_pr and rev not in repo.branches and not (rev.startswith("refs/pr/") and base_sha):
            raise _HttpError(400, f"Invalid rev id: {rev} is not a branch")
        parent = header.get("parentCommit")
        if parent is not None and parent != base_sha:
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[base_sha].files)
        for line in lines[1:]:
            key, v = line.get("key"), line.get("value", {})
            path = v.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise _HttpError(400, f"invalid path {path!r}")
            if key == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                files[path] = self.hub._entry(data, False)
            elif key == "lfsFile":
                oid = v["oid"]
                if oid not in repo.lfs_oids or not self.hub._has_blob(oid):
                    raise _HttpError(422, f"LFS object {oid} for {path} was not uploaded")
                size = int(v.get("size") or len(self.hub._get_blob(oid)))
                files[path] = _Entry(size, oid, True, git_blob_sha1(_lfs_pointer(oid, size)))
            elif key == "deletedFile":
                if path not in files:
                    raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise _HttpError(404, "A folder with this name doesn't exist", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise _HttpError(400, f"unknown commit operation {key!r}")
        c = self.hub._new_commit(repo, base_sha, files, header.get("summary", ""), header.get("description", ""),
                                 self._user() or "")
        prefix = f"{self.hub.endpoint}/{'' if repo.repo_type == 'model' else repo.repo_type + 's/'}{repo.repo_id}"
        pr_url = None
        if create_pr:
            repo.prs.append(c.sha)
            pr_url = f"{prefix}/discussions/{len(repo.prs)}"
        elif rev.startswith("refs/pr/"):
            repo.prs[int(rev.split("/")[-1]) - 1] = c.sha
        else:
            repo.branches[rev] = c.sha
        return self._send(200, {"commitUrl": f"{prefix}/commit/{c.sha}", "commitOid": c.sha,
                                "pullRequestUrl": pr_url, "success": True})

    def _file_json(self, repo: _Repo, c: _Commit, path: str, e: _Entry, expand: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "oid": e.blob_id, "size": e.size, "path": path}
        if e.lfs:
            d["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(_lfs_pointer(e.sha256, e.size))}
        if expand:
            d["lastCommit"] = self._last_commit(repo, c, path)
            d["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                       "pickleImportScan": None}
        return d

    def _dir_json(self, repo: _Repo, c: _Commit, path: str, expand: bool) -> dict[str, Any]:
        prefix = path + "/"
        listing = json.dumps(sorted((p, e.blob_id) for p, e in c.files.items() if p.startswith(prefix)))
        d: dict[str, Any] = {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0,
                             "path": path}
        if expand:
            d["lastCommit"] = self._last_commit(repo, c, path)
        return d

    def _last_commit(self, repo: _Repo, c: _Commit, path: str) -> dict[str, str]:
        def state(commit: _Commit) -> Any:
            if path in commit.files:
                return commit.files[path].blob_id
            return sorted((p, e.blob_id) for p, e in commit.files.items() if p.startswith(path + "/"))

        cur = c
        while cur.parents:
            parent = repo.commits[cur.parents[0]]
            if state(parent) != state(cur):
                break
            cur = parent
        return {"id": cur.sha, "title": cur.title, "date": cur.date}

    def _tree(self, repo: _Repo, rev: str, path: str, recursive: bool, expand: bool) -> None:
        c = self._rev(repo, rev)
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in c.files:
            raise _HttpError(404, f"{path} is a file, not a directory", "EntryNotFound")
        under = sorted(p for p in c.files if p.startswith(prefix))
        if path and not under:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p in under:
            rel = p[len(prefix):].split("/")
            for i in range(1, len(rel)):
                if not recursive and i > 1:
                    break
                dirs.add(prefix + "/".join(rel[:i]))
            if recursive or len(rel) == 1:
                out.append(self._file_json(repo, c, p, c.files[p], expand))
        out += [self._dir_json(repo, c, d, expand) for d in sorted(dirs)]
        out.sort(key=lambda d: d["path"])
        return self._send(200, out)

    def _paths_info(self, repo: _Repo, rev: str) -> None:
        raw = self._body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = json.loads(raw or "{}")
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(raw)
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[-1] in ("True", "true", "1")
        c = self._rev(repo, rev)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in c.files:
                out.append(self._file_json(repo, c, p, c.files[p], expand))
            elif p == "" or any(f.startswith(p + "/") for f in c.files):
                out.append(self._dir_json(repo, c, p, expand))
        return self._send(200, out)

    def _refs(self, repo: _Repo, include_prs: bool) -> None:
        d: dict[str, Any] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in sorted(repo.branches.items())],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in sorted(repo.tags.items())],
            "converts": [],
        }
        if include_prs:
            d["pullRequests"] = [{"name": f"refs/pr/{i + 1}", "ref": f"refs/pr/{i + 1}", "targetCommit": s}
                                 for i, s in enumerate(repo.prs)]
        return self._send(200, d)

    def _branch(self, repo: _Repo, name: str, m: str) -> None:
        if m == "DELETE":
            if name not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if name == "main":
                raise _HttpError(403, "cannot delete the main branch")
            del repo.branches[name]
            return self._send(200, {})
        body = self._json_body()
        if name in repo.branches:
            raise _HttpError(409, f"Reference already exists: refs/heads/{name}")
        if not _valid_ref_name(name):
            raise _HttpError(400, f"Invalid reference name: {name}")
        start = body.get("startingPoint") or "main"
        sha = repo.resolve(start)
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {start}", "RevisionNotFound")
        repo.branches[name] = sha
        return self._send(200, {})

    def _tag(self, repo: _Repo, arg: str, m: str) -> None:
        if m == "DELETE":
            if arg not in repo.tags:
                raise _HttpError(404, f"Invalid rev id: {arg}", "RevisionNotFound")
            del repo.tags[arg]
            return self._send(200, {})
        body = self._json_body()
        tag = body.get("tag", "")
        sha = repo.resolve(arg)
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {arg}", "RevisionNotFound")
        if tag in repo.tags:
            raise _HttpError(409, f"Tag already exists: {tag}")
        if not _valid_ref_name(tag):
            raise _HttpError(400, f"Invalid reference name: {tag}")
        repo.tags[tag] = sha
        return self._send(200, {})

    def _commits(self, repo: _Repo, rev: str) -> None:
        c: _Commit | None = self._rev(repo, rev)
        out = []
        while c is not None:
            out.append({"id": c.sha, "title": c.title, "message": c.message, "authors": [{"user": c.author}],
                        "date": c.date})
            c = repo.commits[c.parents[0]] if c.parents else None
        return self._send(200, out)

    def _resolve(self, rtype: str, repo_id: str, rev: str, path: str) -> None:
        with self.hub._lock:
            repo = self.hub._repo(rtype, repo_id)
            self._check_download(repo)
            c = self._rev(repo, rev)
            e = c.files.get(path)
            if e is None:
                raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
            data = self.hub._get_blob(e.sha256)
        self._maybe_fail(*(("resolve_get",) if self.command == "GET" else ()))
        headers = {"X-Repo-Commit": c.sha, "ETag": f'"{e.blob_id}"', "Accept-Ranges": "bytes"}
        if e.lfs:
            headers["X-Linked-Etag"] = f'"{e.sha256}"'
            headers["X-Linked-Size"] = str(e.size)
        rng = self.headers.get("Range")
        status, body = 200, data
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise _HttpError(416, f"invalid range {rng}")
            if m.group(1) == "":
                start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                headers["Content-Range"] = f"bytes */{len(data)}"
                raise _HttpError(416, "range not satisfiable")
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if self.command == "HEAD":
            headers["Content-Length"] = str(len(body))
        with self.hub._lock:
            cut = next((k for k in self.hub._cuts if k[2] > 0 and k[0] in path), None) if self.command == "GET" else None
            if cut is not None:
                cut[2] -= 1
        if cut is not None and cut[1] < len(body):
            self.send_response(status)
            for k, v in {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:cut[1]])
            self.wfile.flush()
            self.close_connection = True  # the client sees the connection drop mid-body
            self._bytes_out, self._status = cut[1], status
            return None
        return self._send(status, raw=body, headers=headers, content_type="application/octet-stream")


def _valid_ref_name(name: str) -> bool:
    """git check-ref-format rules (the subset that matters)."""
    return bool(name) and not (
        name.startswith(("/", "-", ".")) or name.endswith(("/", ".", ".lock")) or ".." in name or "//" in name
        or "@{" in name or re.search(r"[\x00-\x20~^:?*\[\\\x7f]", name)
    )


def _card_data(readme: bytes) -> dict[str, Any] | None:
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.decode(errors="replace"), re.S)
    if not m:
        return None
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None
