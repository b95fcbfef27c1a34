"""A bounded, thread-safe LRU map: the one shape of the per-process memos (parsed volume headers and shard
indexes, parquet footers, mask row groups, packed masks), so rows of one volume parse what they share once.

>>> m = LRU(2)
>>> m.put("a", 1); m.put("b", 2); m.get("a")
1
>>> m.put("c", 3)            # "b" was used least recently: dropped
>>> m.get("b") is None, len(m)
(True, 2)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

__all__ = ["LRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``maxsize`` entries; :meth:`get` marks an entry used, :meth:`put` drops the least recently used."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = int(maxsize)
        self._items: "OrderedDict[K, V]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        return f"LRU({len(self)}/{self.maxsize})"
