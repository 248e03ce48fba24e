"""What the pretrained taggers (model/musicnn.py) hear in a track, pooled per track.

A track's tagger input (the spectrogram job's second output: 96 Slaney bands of 16 kHz
audio, log10(1 + 10000 x)) is cut into non-overlapping 3-second patches, the taggers'
input length; every tagger runs on every patch, and each layer is pooled over the
track's patches (and, for the per-frame front end, over its frames) by mean and
spread. Those vectors feed a learned head (model/pretrained.py); the tags' mean
probabilities are what the published track table shows.

Why these layers: the front end's pooled filters describe timbre and tempo and carry
over to music the taggers never heard; the penultimate layer and the tags describe
genre and mood as the taggers' datasets saw them. The head is fitted on all of them.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model import musicnn
from schemas import cli, layout, mels, storage
from schemas.config import TagsConfig

logger = logging.getLogger(__name__)

CHUNK = 16  # tracks whose patches run through a tagger at a time (memory: ~70 MB each)


class Heard(NamedTuple):
    """features: (tracks, dims) float32, every tagger's pooled layers side by side;
    tags: tagger name -> (tracks, labels) float32, mean tag probabilities."""
    features: np.ndarray
    tags: dict[str, np.ndarray]


def patches(mel: torch.Tensor) -> torch.Tensor:
    """(tracks, patches, PATCH_FRAMES, bands) of tagger inputs (tracks, bands, frames):
    every whole patch; an excerpt shorter than one patch is looped to fill it."""
    frames = mel.shape[2]
    if frames < musicnn.PATCH_FRAMES:
        mel = mel.repeat(1, 1, -(-musicnn.PATCH_FRAMES // frames))[:, :, :musicnn.PATCH_FRAMES]
    count = mel.shape[2] // musicnn.PATCH_FRAMES
    cut = mel[:, :, :count * musicnn.PATCH_FRAMES].float()
    return cut.reshape(mel.shape[0], mel.shape[1], count, musicnn.PATCH_FRAMES).permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=1)
def version() -> str:
    """12 hex digits of the taggers' weights: what they hear changes with it."""
    digest = hashlib.sha1()
    for name, net in taggers("cpu").items():
        digest.update(name.encode())
        for key, tensor in sorted(net.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def taggers(device: str = "cpu") -> dict[str, torch.nn.Module]:
    """Every tagger, loaded once per process and device."""
    return {name: musicnn.load(name, device) for name in musicnn.TAGGERS}


def _mean_spread(values: torch.Tensor) -> list[torch.Tensor]:
    """Mean and standard deviation over dimension 1 of (tracks, samples, dims)."""
    return [values.mean(dim=1), values.std(dim=1, correction=0)]


@torch.inference_mode()
def _run(mel: torch.Tensor) -> list[np.ndarray]:
    """Per track: its features, then each tagger's mean tag probabilities."""
    out = []
    nets = taggers(str(mel.device))
    progress = cli.Progress(logger, "tracks heard by the pretrained taggers", mel.shape[0])
    for start in range(0, mel.shape[0], CHUNK):
        cut = patches(mel[start:start + CHUNK])
        n, p = cut.shape[:2]
        parts, tags = [], []
        for net in nets.values():
            heard = net(cut.reshape(n * p, *cut.shape[2:]))
            frames = heard.frontend.reshape(n, -1, heard.frontend.shape[-1])
            probabilities = torch.sigmoid(heard.logits).reshape(n, p, -1)
            parts += _mean_spread(frames) + _mean_spread(heard.penultimate.reshape(n, p, -1)) \
                + _mean_spread(probabilities)
            tags.append(probabilities.mean(dim=1))
        out += [torch.cat(parts + tags, dim=1).cpu().numpy()]
        progress.add(n)
    return out


# Tracks heard in this process, by a digest of their input: one evaluation predicts the
# same held-out tracks with several members and variants.
_MEMO: dict[bytes, np.ndarray] = {}
_MEMO_TRACKS = 20_000


def hear(mel: torch.Tensor) -> Heard:
    """The pooled features and mean tag probabilities of tagger inputs (tracks, bands,
    frames), computed where ``mel`` is."""
    host = mel.detach().cpu().contiguous().numpy()
    keys = [hashlib.sha1(row.tobytes()).digest() for row in host]
    todo = sorted({i for i, key in enumerate(keys) if key not in _MEMO})
    if todo:
        rows = np.concatenate(_run(mel[todo]))
        if len(_MEMO) + len(todo) > _MEMO_TRACKS:
            _MEMO.clear()
        _MEMO.update({keys[i]: row for i, row in zip(todo, rows)})
    if not keys:
        return Heard(np.zeros((0, 0), np.float32), {n: np.zeros((0, 0)) for n in musicnn.TAGGERS})
    whole = np.stack([_MEMO[key] for key in keys])
    widths = [len(musicnn.labels(name)) for name in musicnn.TAGGERS]
    split = np.cumsum([whole.shape[1] - sum(widths)] + widths)
    parts = np.split(whole, split[:-1], axis=1)
    return Heard(parts[0], dict(zip(musicnn.TAGGERS, parts[1:])))


def _as_column(rows: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel(), pa.float32()), rows.shape[1])


def _matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy().reshape(-1, width)


def heard_shard(shard: Path) -> pa.Table:
    """What the taggers heard in every track of a tagger-input shard: track_id, features
    and each tagger's tags (mean probabilities), as float32 lists. Computed once per
    shard and tagger version, and kept beside it (schemas/layout.py heard_file): a
    shard never changes, and running the taggers is the costly part (about a second
    per 30-second excerpt on one core)."""
    cached = layout.heard_file(shard, version())
    if cached.exists():
        return pq.read_table(cached)
    table = mels.conform(pq.read_table(shard))
    found = Heard(np.zeros((0, 0), np.float32), {})
    if table.num_rows:
        found = hear(torch.from_numpy(mels.values(table).astype(np.float32)))
    columns = {"track_id": table.column("track_id")}
    if table.num_rows:
        columns["features"] = _as_column(found.features)
        columns.update({name: _as_column(tags) for name, tags in found.tags.items()})
    out = pa.table(columns)
    cached.parent.mkdir(exist_ok=True)
    with storage.atomic_file(cached) as tmp:
        pq.write_table(out, tmp)
    return out


def recall_heard(shard: Path, table: pa.Table) -> int:
    """Let :func:`hear` answer the rows of ``table`` (conformed rows of the tagger-input
    ``shard``) from what the taggers heard in that shard, where it is kept beside it
    (:func:`heard_shard`); returns how many rows it can answer. Tagging keeps it for
    every shard, so choosing, scoring and the evaluation run the taggers only on tracks
    not heard before."""
    cached = layout.heard_file(shard, version())
    if not cached.exists():
        return 0
    row_of, whole = _kept(str(cached))
    rows = [(i, row_of[track]) for i, track in enumerate(table.column("track_id").to_pylist())
            if track in row_of]
    if not rows:
        return 0
    values = mels.values(table)
    if len(_MEMO) + len(rows) > _MEMO_TRACKS:
        _MEMO.clear()
    for i, j in rows:  # keyed as hear() keys what it is given
        _MEMO[hashlib.sha1(np.ascontiguousarray(values[i]).tobytes()).digest()] = whole[j]
    return len(rows)


@functools.lru_cache(maxsize=2)
def _kept(path: str) -> tuple[dict[str, int], np.ndarray]:
    """A heard file (never rewritten once there) as (track -> row, rows as hear() holds
    them: features, then each tagger's tags): read once, not once per row group,
    candidate and fold predicted from its shard."""
    heard = pq.read_table(path)
    width = heard.schema.field("features").type.list_size
    whole = np.concatenate([_matrix(heard.column("features"), width)] + [
        _matrix(heard.column(name), len(musicnn.labels(name))) for name in musicnn.TAGGERS], axis=1)
    return {track: i for i, track in enumerate(heard.column("track_id").to_pylist())}, whole


def heard_tracks(shards: Sequence[Path], track_ids: Sequence[str]) -> tuple[list[str], Heard]:
    """(ids in the order found, what the taggers heard in them) for the wanted tracks of
    tagger-input shards, each track once (its first shard)."""
    wanted, ids, features, tags = set(track_ids), [], [], {name: [] for name in musicnn.TAGGERS}
    for shard in shards:
        if not wanted:
            break
        table = heard_shard(shard)
        names = table.column("track_id").to_pylist()
        first = {}
        for i, track in enumerate(names):
            if track in wanted:
                first.setdefault(track, i)
        rows = list(first.values())
        if not rows:
            continue
        part = table.take(rows)
        width = part.schema.field("features").type.list_size
        features.append(_matrix(part.column("features"), width))
        for name in tags:
            tags[name].append(_matrix(part.column(name), len(musicnn.labels(name))))
        found = [names[i] for i in rows]
        ids += found
        wanted -= set(found)
    if not ids:
        return [], Heard(np.zeros((0, 0), np.float32), {n: np.zeros((0, 0)) for n in tags})
    return ids, Heard(np.concatenate(features), {n: np.concatenate(t) for n, t in tags.items()})


def heard_tags(shard: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(track ids, tagger name -> (tracks, labels) float32 mean tag probabilities) of
    every row of a tagger-input shard (heard_shard: computed once, then read)."""
    table = heard_shard(shard)
    widths = {name: len(musicnn.labels(name)) for name in musicnn.TAGGERS}
    if not table.num_rows:
        return [], {name: np.zeros((0, width), np.float32) for name, width in widths.items()}
    return (table.column("track_id").to_pylist(),
            {name: _matrix(table.column(name), width) for name, width in widths.items()})


def ranked_tags(probabilities: dict[str, np.ndarray],
                count: int = TagsConfig.top_tags) -> list[list[tuple[str, float]]]:
    """Each track's ``count`` most probable (tag, probability) over every tagger
    (tagger name -> (tracks, labels) probabilities; a tag both taggers know, compared
    in lower case, counts once, at its higher probability), most probable first; ties
    in the taggers' order of labels."""
    names = list(probabilities)
    if not names:
        return []
    vocabulary = list(dict.fromkeys(label.lower() for name in names
                                    for label in musicnn.labels(name)))
    position = {tag: i for i, tag in enumerate(vocabulary)}
    merged = np.zeros((len(probabilities[names[0]]), len(vocabulary)), np.float32)
    for name in names:
        columns = [position[label.lower()] for label in musicnn.labels(name)]
        np.maximum.at(merged, (slice(None), columns), probabilities[name])
    best = np.argsort(-merged, axis=1, kind="stable")[:, :count]
    return [[(vocabulary[j], float(merged[i, j])) for j in row] for i, row in enumerate(best)]


def top_tags(probabilities: dict[str, np.ndarray],
             count: int = TagsConfig.top_tags) -> list[list[str]]:
    """Each track's ``count`` most probable tags (see ranked_tags), most probable first."""
    return [[tag for tag, _ in ranked] for ranked in ranked_tags(probabilities, count)]
