"""Every environment variable the package reads, with its default: the one place that reads ``os.environ``.

Values are read when asked for (never at import time), so a test or a notebook can change a variable and the
next call sees it.

| variable | default | what |
| --- | --- | --- |
| ``RADGENOME_CACHE`` | ``~/.cache/radgenome_hf`` | root of the package's caches: prepared volumes, packed masks, chunks of remote volumes, download plans |
| ``RADGENOME_CACHE_MAX_BYTES`` | 200 GiB | size bound of the prepared-volume cache (decoded rows, preset outputs) |
| ``RADGENOME_CHUNK_CACHE_MAX_BYTES`` | 20 GiB | size bound of the chunks of remote volumes kept locally (``<cache>/chunks``) |
| ``RADGENOME_OPEN_VOLUMES_MAX_BYTES`` | 512 MiB | per-process bound of the decoded volumes kept in memory for later rows |
| ``RADGENOME_MAX_VOLUME_BYTES`` | 16 GiB | largest decoded volume a header may ask for (larger = corrupt) |
| ``RADGENOME_LLM_ENDPOINT`` / ``RADGENOME_LLM_MODEL`` | unset | the optional LLM grounding backend |
| ``RADGENOME_LLM_API_KEY`` (else ``OPENAI_API_KEY``) | unset | its key, sent in a header only |
| ``RANK`` / ``WORLD_SIZE`` | 0 / 1 | the node split when ``torch.distributed`` is not initialised |
| ``RADGENOME_RAY_ADDRESS`` | unset (a local Ray instance) | the Ray cluster ``generate --ray`` joins |
| ``RADGENOME_WORKERS`` | all cores | processes of the generation stages' local pool (``--workers``) |

>>> import os
>>> os.environ["RADGENOME_CACHE"] = "/tmp/rg-cache"
>>> cache_root(), masks_cache_root(), chunk_cache_root()
(PosixPath('/tmp/rg-cache'), PosixPath('/tmp/rg-cache/masks'), PosixPath('/tmp/rg-cache/chunks'))
>>> del os.environ["RADGENOME_CACHE"]
>>> max_volume_bytes() == 16 << 30
True
>>> generate_workers() == (os.cpu_count() or 1) if "RADGENOME_WORKERS" not in os.environ else True
True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "cache_root", "masks_cache_root", "chunk_cache_root", "chunk_cache_max_bytes", "plans_cache_root",
    "prepared_cache_max_bytes", "open_volumes_max_bytes", "max_volume_bytes",
    "llm_settings", "dist_env", "ray_address", "generate_workers",
]


def _int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} is not an integer (bytes)") from None


def cache_root() -> Path:
    """``$RADGENOME_CACHE`` or ``~/.cache/radgenome_hf``: the prepared-volume cache lives here."""
    env = os.environ.get("RADGENOME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radgenome_hf"


def masks_cache_root() -> Path:
    """Where packed masks of upstream mask sources are kept: ``<cache_root>/masks``."""
    return cache_root() / "masks"


def chunk_cache_root() -> Path:
    """Where chunks of remote chunked volumes are kept: ``<cache_root>/chunks``."""
    return cache_root() / "chunks"


def chunk_cache_max_bytes() -> int:
    """``$RADGENOME_CHUNK_CACHE_MAX_BYTES`` or 20 GiB."""
    return _int("RADGENOME_CHUNK_CACHE_MAX_BYTES", 20 << 30)


def plans_cache_root() -> Path:
    """Where subset download plans are kept (one small JSON per repo commit and subset): ``<cache_root>/plans``."""
    return cache_root() / "plans"


def prepared_cache_max_bytes() -> int:
    """``$RADGENOME_CACHE_MAX_BYTES`` or 200 GiB."""
    return _int("RADGENOME_CACHE_MAX_BYTES", 200 << 30)


def open_volumes_max_bytes() -> int:
    """``$RADGENOME_OPEN_VOLUMES_MAX_BYTES`` or 512 MiB: how many bytes of decoded volumes one process keeps, so
    the many rows of one volume decode it once (``0`` keeps none)."""
    return _int("RADGENOME_OPEN_VOLUMES_MAX_BYTES", 512 << 20)


def max_volume_bytes() -> int:
    """``$RADGENOME_MAX_VOLUME_BYTES`` or 16 GiB: a header asking for more is treated as corrupt."""
    return _int("RADGENOME_MAX_VOLUME_BYTES", 16 << 30)


def llm_settings() -> tuple[str, str | None, str | None]:
    """(endpoint, model, api key) of the LLM grounding backend from the environment (``""``/``None`` when unset)."""
    key = os.environ.get("RADGENOME_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return os.environ.get("RADGENOME_LLM_ENDPOINT") or "", os.environ.get("RADGENOME_LLM_MODEL"), key


def dist_env() -> tuple[int, int]:
    """(rank, world size) from ``$RANK`` / ``$WORLD_SIZE``, else (0, 1)."""
    return _int("RANK", 0), _int("WORLD_SIZE", 1)


def ray_address() -> str | None:
    """``$RADGENOME_RAY_ADDRESS`` (e.g. ``ray://head:10001`` or ``auto``), else ``None``: start a local Ray."""
    return os.environ.get("RADGENOME_RAY_ADDRESS") or None


def generate_workers() -> int:
    """``$RADGENOME_WORKERS`` or every core: the local process pool of the generation stages."""
    return max(1, _int("RADGENOME_WORKERS", os.cpu_count() or 1))
