"""Sizes in reprs: the lazy objects show how much memory they hold or would hold (like TorchIO's images)."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    >>> format_bytes(64), format_bytes(1536), format_bytes(157 << 20)
    ('64 B', '1.5 KiB', '157.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
