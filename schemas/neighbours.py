"""Reading the similar-track index (jobs/index.py writes it): one Voyager (HNSW) index
per shard of the factor table, each answering with the table's row numbers, searched
together as one.

Read by the query command and benchmarks/similar.py; building is the index job's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from voyager import Index

from schemas import layout


class ShardedIndex:
    """The shards of one index, searched as one: each shard's k nearest, then the k
    nearest of them all (ties to the lower row)."""

    def __init__(self, shards: list[Index]) -> None:
        self.shards = shards

    @classmethod
    def load(cls, folder: Path) -> ShardedIndex:
        """The index in ``folder``; one built before indexes had shards is one shard."""
        manifest = json.loads((folder / layout.INDEX_MANIFEST).read_text())
        names = manifest.get("shards", [layout.INDEX_FILE])
        return cls([Index.load(str(folder / name)) for name in names])

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def query(self, vector: np.ndarray, k: int, query_ef: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine distances) of the ``k`` nearest tracks, nearest first."""
        found = [shard.query(vector, k=min(k, len(shard)), query_ef=query_ef)
                 for shard in self.shards if len(shard)]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows = np.concatenate([ids for ids, _ in found]).astype(np.int64)
        distances = np.concatenate([d for _, d in found])
        order = np.lexsort((rows, distances))[:k]
        return rows[order], distances[order]
