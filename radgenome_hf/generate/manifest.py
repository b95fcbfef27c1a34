"""A resumable-stage manifest: what a generation stage has done, keyed by content, in one sqlite file.

Every stage (segment, ground, vqa, ...) records, per item, the key it ran with — the input's content hash,
the backend name and version, and a hash of its parameters — and whether it ended ``done`` (with its outputs)
or ``failed`` (with the error text). A re-run skips an item only when its recorded key is unchanged and it
ended ``done``; a changed input, backend version or parameter redoes it. sqlite gives atomic, crash-safe
updates (one transaction per record) and lets several processes read the file while one writes.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> m = Manifest(os.path.join(d, "manifest.sqlite"), stage="segment")
>>> key = ManifestKey("train_1_a_1", input_hash="abc", backend="threshold", version="1", params_hash=params_hash({}))
>>> m.is_done(key)
False
>>> m.mark_done(key, outputs={"masks": "train_1_a_1.masks.parquet"})
>>> m.is_done(key), m.is_done(key._replace(version="2"))
(True, False)
>>> m.mark_failed(key._replace(item="train_2_a_1"), "CorruptVolumeError: truncated")
>>> [e.item for e in m.entries("failed")]
['train_2_a_1']
>>> m.close()
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal, Mapping, NamedTuple

import numpy as np

from ..errors import ManifestError

Status = Literal["done", "failed"]

_SCHEMA_VERSION = 1
_CHUNK = 4 << 20


class ManifestKey(NamedTuple):
    """What an item's result depends on. ``item`` names it (e.g. the volume name)."""

    item: str
    input_hash: str
    backend: str
    version: str
    params_hash: str


class ManifestEntry(NamedTuple):
    """One recorded attempt (the latest one per item)."""

    item: str
    input_hash: str
    backend: str
    version: str
    params_hash: str
    status: Status
    error: str | None
    outputs: dict[str, Any]
    seconds: float | None
    updated: float

    @property
    def key(self) -> ManifestKey:
        return ManifestKey(self.item, self.input_hash, self.backend, self.version, self.params_hash)


# -- hashing ------------------------------------------------------------------------------------------
def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (streamed), as ``"sha256:<hex>"``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def params_hash(params: Mapping[str, Any] | None) -> str:
    """Stable hash of a parameter mapping (canonical JSON: sorted keys, tuples as lists)."""
    text = json.dumps(_jsonable(dict(params or {})), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


# -- the manifest -------------------------------------------------------------------------------------
class Manifest:
    """One stage's record of done / failed items, in a sqlite file (created on first use).

    Args:
        path: the sqlite file (e.g. ``<out_dir>/.manifest.sqlite``).
        stage: the stage name; opening a manifest written by another stage raises :class:`ManifestError`.

    The object is usable from several threads; each process should open its own.
    """

    def __init__(self, path: str | os.PathLike, stage: str) -> None:
        self.path = Path(path)
        self.stage = stage
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx():
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS items (item TEXT PRIMARY KEY, input_hash TEXT NOT NULL, "
                    "backend TEXT NOT NULL, version TEXT NOT NULL, params_hash TEXT NOT NULL, "
                    "status TEXT NOT NULL, error TEXT, outputs TEXT NOT NULL, seconds REAL, updated REAL NOT NULL)"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                    "mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL)"
                )
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    self._db.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("stage", stage), ("schema", str(_SCHEMA_VERSION))],
                    )
                    meta = {"stage": stage, "schema": str(_SCHEMA_VERSION)}
        except sqlite3.DatabaseError as exc:
            raise ManifestError(
                f"{self.path}: not a readable manifest ({exc}); delete it to start the stage afresh"
            ) from exc
        if meta.get("stage") != stage:
            self.close()
            raise ManifestError(
                f"{self.path}: this manifest belongs to stage {meta.get('stage')!r}, not {stage!r}; "
                "use another output folder or delete the manifest"
            )
        if meta.get("schema") != str(_SCHEMA_VERSION):
            self.close()
            raise ManifestError(
                f"{self.path}: manifest schema {meta.get('schema')} is not {_SCHEMA_VERSION}; delete it to redo the stage"
            )

    # sqlite connection in autocommit mode; explicit transactions so each record is atomic
    def _tx(self):
        db = self._db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    def close(self) -> None:
        try:
            self._db.close()
        except Exception:  # pragma: no cover - already closed
            pass

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self):  # pragma: no cover - guard against shipping a connection to a worker
        raise TypeError("Manifest objects hold a sqlite connection; open the manifest in each process instead")

    # -- hashing with a cache -----------------------------------------------------------------------
    def input_hash(self, path: str | os.PathLike) -> str:
        """:func:`file_hash` of ``path``, cached by (absolute path, size, mtime) so re-runs do not re-read inputs."""
        p = Path(path).resolve()
        st = p.stat()
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, hash FROM file_hashes WHERE path = ?", (str(p),)
            ).fetchone()
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2]
        digest = file_hash(p)
        with self._lock, self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (str(p), st.st_size, st.st_mtime_ns, digest)
            )
        return digest

    # -- records --------------------------------------------------------------------------------------
    def get(self, item: str) -> ManifestEntry | None:
        """The latest recorded attempt for ``item``, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM items WHERE item = ?", (item,)).fetchone()
        return None if row is None else _entry(row)

    def status(self, key: ManifestKey) -> Status | None:
        """``"done"``/``"failed"`` if the latest attempt ran with exactly this key, else ``None`` (never run, or stale)."""
        e = self.get(key.item)
        if e is None or e.key != key:
            return None
        return e.status

    def is_done(self, key: ManifestKey) -> bool:
        return self.status(key) == "done"

    def _record(
        self, key: ManifestKey, status: Status, error: str | None, outputs: Mapping[str, Any] | None, seconds: float | None
    ) -> None:
        with self._lock, self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, status, error, json.dumps(_jsonable(dict(outputs or {}))), seconds, time.time()),
            )

    def mark_done(self, key: ManifestKey, outputs: Mapping[str, Any] | None = None, seconds: float | None = None) -> None:
        """Record a success (replacing any earlier attempt of the item)."""
        self._record(key, "done", None, outputs, seconds)

    def mark_failed(self, key: ManifestKey, error: str, seconds: float | None = None) -> None:
        """Record a failure with its error text (replacing any earlier attempt of the item)."""
        self._record(key, "failed", str(error), None, seconds)

    def entries(self, status: Status | None = None) -> list[ManifestEntry]:
        """Every recorded item (optionally only ``done`` or ``failed``), sorted by item."""
        q = "SELECT * FROM items" + (" WHERE status = ?" if status else "") + " ORDER BY item"
        with self._lock:
            rows = self._db.execute(q, (status,) if status else ()).fetchall()
        return [_entry(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def __repr__(self) -> str:
        return f"Manifest(path={str(self.path)!r}, stage={self.stage!r}, items={len(self)})"


def _entry(row: tuple) -> ManifestEntry:
    item, ih, backend, version, ph, status, error, outputs, seconds, updated = row
    return ManifestEntry(item, ih, backend, version, ph, status, error, json.loads(outputs), seconds, updated)
