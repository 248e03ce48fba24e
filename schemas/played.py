"""Who played what, kept in a snapshot for its queries (jobs/publish.py writes it,
jobs/query.py reads it): the plays as row numbers of the snapshot's users (in the
order of its user table) and tracks (of its track table), both ways, as NumPy files
that a query opens by memory map and reads a few entries of.

    played/by_user.indptr.npy   (users + 1,) int64: user u's tracks are
    played/by_user.tracks.npy   tracks[indptr[u]:indptr[u + 1]], int32, ascending
    played/by_track.indptr.npy  and the same for each track's users
    played/by_track.users.npy

With them a query answers from the snapshot alone, in milliseconds, whatever order
the plays file is in, and never from a plays file that a later night has rewritten.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _compressed(outer: np.ndarray, inner: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the distinct pairs, grouped by ``outer`` (0..size-1)."""
    pairs = np.unique(outer.astype(np.int64) << 32 | inner.astype(np.int64))
    indptr = np.zeros(size + 1, np.int64)
    np.cumsum(np.bincount(pairs >> 32, minlength=size), out=indptr[1:])
    return indptr, (pairs & 0xFFFFFFFF).astype(np.int32)


def write(folder: Path, user_rows: np.ndarray, track_rows: np.ndarray, users: int,
          tracks: int) -> None:
    """Write the plays (user_rows[i] played track_rows[i]) into ``folder``."""
    folder.mkdir()
    for name, outer, inner, size in (("by_user", user_rows, track_rows, users),
                                     ("by_track", track_rows, user_rows, tracks)):
        indptr, indices = _compressed(outer, inner, size)
        np.save(folder / f"{name}.indptr.npy", indptr)
        np.save(folder / f"{name}.{'tracks' if name == 'by_user' else 'users'}.npy", indices)


class Played:
    """The plays of a snapshot, opened by memory map."""

    def __init__(self, folder: Path) -> None:
        def load(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy", mmap_mode="r")
        self._by_user = load("by_user.indptr"), load("by_user.tracks")
        self._by_track = load("by_track.indptr"), load("by_track.users")

    @staticmethod
    def of(folder: Path) -> Played | None:
        """The plays kept in ``folder``, or None for a snapshot that keeps none."""
        return Played(folder) if (folder / "by_user.indptr.npy").exists() else None

    def tracks_of(self, user_row: int) -> np.ndarray:
        indptr, tracks = self._by_user
        return np.asarray(tracks[indptr[user_row]:indptr[user_row + 1]])

    def users_of(self, track_row: int) -> np.ndarray:
        indptr, users = self._by_track
        return np.asarray(users[indptr[track_row]:indptr[track_row + 1]])
