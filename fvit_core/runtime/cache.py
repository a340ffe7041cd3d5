"""Runtime strategy: least-recently-used caches, for the dashboard's sliders and selectors.

:class:`LRU` is the one bounded map of the project (thread safe): the dashboard's per-session
results use it, and :class:`ModelCache` keeps one per model (forgotten with the model). Callers
key entries by everything a result depends on, including
:func:`runtime.precision.weights_fingerprint`, so a cached result is always the one a fresh
computation would give (analysis.cache holds the analysis' caches: tests/test_pipeline.py).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

from torch import nn

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries, the least recently used first out; thread safe."""

    def __init__(self, size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"a cache holds at least one entry, got size {size!r}")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The entry under ``key`` (now the most recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
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


class ModelCache(Generic[V]):
    """An :class:`LRU` of at most ``size`` entries per model, forgotten with the model; thread safe."""

    def __init__(self, size: int):
        LRU(size)  # the same check of the size
        self.size = size
        self._per_model: "weakref.WeakKeyDictionary[nn.Module, LRU[Hashable, V]]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _lru(self, model: nn.Module, create: bool) -> "LRU[Hashable, V] | None":
        with self._lock:
            lru = self._per_model.get(model)
            if lru is None and create:
                lru = self._per_model[model] = LRU(self.size)
            return lru

    def get(self, model: nn.Module, key: Hashable) -> V | None:
        """The entry of ``model`` under ``key`` (now the most recently used), or None."""
        lru = self._lru(model, create=False)
        return None if lru is None else lru.get(key)

    def put(self, model: nn.Module, key: Hashable, value: V) -> None:
        self._lru(model, create=True).put(key, value)

    def clear(self) -> None:
        with self._lock:
            self._per_model.clear()
