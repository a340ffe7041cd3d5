"""Runtime strategy: results cached per model, for the dashboard's sliders and selectors.

A :class:`ModelCache` keeps the last results computed with a model (an LRU per model, forgotten
with the model). Callers key entries by everything the result depends on, including
:func:`runtime.precision.weights_fingerprint`, so a cached result is always the one a fresh
computation would give (the analysis caches its seeded attack stages, attacked images and FViT
estimates: tests/test_pipeline.py).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

from torch import nn

V = TypeVar("V")


class ModelCache(Generic[V]):
    """At most ``size`` entries per model, least recently used first out; thread safe."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a cache holds at least one entry, got size {size}")
        self.size = size
        self._entries: "weakref.WeakKeyDictionary[nn.Module, OrderedDict[Hashable, V]]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, model: nn.Module, key: Hashable) -> V | None:
        """The entry of ``model`` under ``key`` (now the most recently used), or None."""
        with self._lock:
            entries = self._entries.get(model)
            if entries is None or key not in entries:
                return None
            entries.move_to_end(key)
            return entries[key]

    def put(self, model: nn.Module, key: Hashable, value: V) -> None:
        with self._lock:
            entries = self._entries.setdefault(model, OrderedDict())
            entries[key] = value
            entries.move_to_end(key)
            while len(entries) > self.size:
                entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
