"""Image features kept across requests: an image seen before costs no vision time, in a chat, the
Python API or the server alike. Keyed by the hash of the tiles' pixels (so the same picture tiled
another way is another entry), bounded in bytes, least recently used first out."""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

import numpy as np

DEFAULT_IMAGE_CACHE_MB = 64  # ~70 InternVL3 tiles or ~430 SmolVLM2 tiles: little on a 4 GB board


class FeatureCache:
    def __init__(self, limit_mb: float = DEFAULT_IMAGE_CACHE_MB) -> None:
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = Lock()  # the server's worker and its request threads both look up
        self.limit_bytes, self.bytes = int(limit_mb * 2**20), 0

    def get(self, digest: str) -> np.ndarray | None:
        with self._lock:
            features = self._items.get(digest)
            if features is not None:
                self._items.move_to_end(digest)
            return features

    def put(self, digest: str, features: np.ndarray) -> None:
        """Keep `features` (read-only from now on); entries over the limit go, oldest first."""
        if features.nbytes > self.limit_bytes:
            return
        features.setflags(write=False)
        with self._lock:
            if (old := self._items.pop(digest, None)) is not None:
                self.bytes -= old.nbytes
            self._items[digest] = features
            self.bytes += features.nbytes
            while self.bytes > self.limit_bytes:
                self.bytes -= self._items.popitem(last=False)[1].nbytes

    def resize(self, limit_mb: float) -> None:
        """A new bound (0: keep nothing); entries over it go now."""
        self.limit_bytes = int(limit_mb * 2**20)
        with self._lock:
            while self.bytes > self.limit_bytes:
                self.bytes -= self._items.popitem(last=False)[1].nbytes

    def __len__(self) -> int:
        return len(self._items)
