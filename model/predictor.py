"""The shipped predictor: one object that owns a model file and answers ``predict``.

An ensemble of members (model/member.py) whose predictions are averaged: the CNN
(model/net.py, with its metadata branch where it has one), the taste classifier
(model/taste.py), the bag-of-words baseline (model/bow.py). Training builds one,
choosing judges and ships one, scoring, the evaluation and the report load one; none
of them takes a model file apart. Every check runs inside ``predict``: the
excerpts' mel settings, the factor space the predictions will sit in, the metadata a
member reads, and each member's own (the taste classifier's statistics version).

A new kind of member is a Member subclass in its own module, added to MEMBERS here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import schemas
from model import metadata
from model.artefact import load_weights
from model.bow import Bow
from model.member import Member
from model.net import Network
from model.pretrained import Pretrained
from model.taste import Taste
from schemas import mels as mel_schema
from schemas import model_file, storage
from schemas.config import MelParams

MEMBERS: dict[str, type[Member]] = {member.kind: member
                                    for member in (Network, Taste, Bow, Pretrained)}


class FactorSpace(NamedTuple):
    """The ALS factors predictions will sit beside: their factor space's id (None for
    factors that name none) and where they are, for messages."""
    id: str | None
    where: str

    @classmethod
    def of(cls, factors: str | os.PathLike) -> FactorSpace:
        """The space of the ALS factors stored at ``factors``."""
        return cls(storage.read_params(factors).get(model_file.FACTOR_SPACE), str(factors))


@dataclass(frozen=True)
class Excerpts:
    """Log-mel excerpts of tracks and the settings they were made with.

    mels: (n, n_mels, frames), any float dtype; params: schemas.config.MelParams as a
    dict (a shard's schema metadata)."""
    track_ids: list[str]
    mels: np.ndarray
    params: dict

    @classmethod
    def of(cls, table: pa.Table, params: dict) -> Excerpts:
        """The excerpts of a mel shard's rows (schemas.MEL_SHARD)."""
        return cls(table.column("track_id").to_pylist(), mel_schema.values(table), params)


@dataclass(frozen=True)
class Predictor:
    """An ensemble of ``members``, the mel settings it reads, the factor space it
    learned and what training and choosing recorded (``metrics``).

    ``withheld`` names catalogue columns left out of what its members read (("artist",):
    predict each track as if its artist were new)."""
    members: tuple[Member, ...]
    mel_params: dict
    factor_space: str | None
    metrics: dict = field(default_factory=dict)
    version: str = ""
    withheld: tuple[str, ...] = ()
    device: torch.device = torch.device("cpu")
    source: str = "the model"  # its file, for messages

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a predictor needs at least one member")
        if not self.version:
            object.__setattr__(self, "version", self.digest())

    # -- what it is ---------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(member.kind for member in self.members)

    def member(self, kind: str) -> Member | None:
        """The first member of ``kind``, or None."""
        return next((m for m in self.members if m.kind == kind), None)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The catalogue tokens its members read; empty when it reads audio only."""
        return tuple(token for member in self.members for token in member.vocabulary)

    @property
    def n_factors(self) -> int:
        return self.members[0].n_factors

    def digest(self) -> str:
        """A content hash of every member's arrays: the same ensemble, the same version."""
        digest = hashlib.sha1()
        for member in self.members:
            digest.update(member.kind.encode())
            for name, tensor in sorted(member.tensors().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:12]

    # -- variants -----------------------------------------------------------------------

    def without(self, kind: str) -> Predictor:
        """The ensemble less its members of ``kind`` (the network alone, say)."""
        return dataclasses.replace(self, members=tuple(m for m in self.members if m.kind != kind),
                                   version="")

    @classmethod
    def combined(cls, predictors: Sequence[Predictor], source: str = "the ensemble") -> Predictor:
        """One ensemble of the members of ``predictors``, which learned the same factor
        space from the same spectrograms; a kind that reads only those spectrograms'
        statistics (the taste classifier) is kept once, from the first that has it, so
        that it does not count twice."""
        first = predictors[0]
        for other in predictors[1:]:
            if other.factor_space != first.factor_space or \
                    MelParams.from_dict(other.mel_params) != MelParams.from_dict(first.mel_params):
                raise ValueError(f"{other.source} and {first.source} learned other factors or "
                                 "spectrograms: they cannot be combined")
        members, seen = [], set()
        for predictor in predictors:
            for member in predictor.members:
                if member.kind == Taste.kind and member.kind in seen:
                    continue
                seen.add(member.kind)
                members.append(member)
        return cls(tuple(members), first.mel_params, first.factor_space,
                   {"loss": " + ".join(str(p.metrics.get("loss")) for p in predictors),
                    "combined": [p.source for p in predictors]}, source=source)

    def withholding(self, columns: Sequence[str]) -> Predictor:
        return dataclasses.replace(self, withheld=tuple(columns))

    def held_out(self) -> Predictor:
        """The ensemble as judged on training's validation tracks: each member as fitted
        without them (the taste classifier learns every warm track)."""
        members = tuple(m for m in (m.held_out() for m in self.members) if m is not None)
        return dataclasses.replace(self, members=members, version="")

    def fold(self, index: int) -> Predictor | None:
        """The ensemble as fitted without fold ``index`` of the warm tracks
        (model/data.py fold_of); None when a member has no such version."""
        members = tuple(m.fold(index) for m in self.members)
        if any(m is None for m in members):
            return None
        return dataclasses.replace(self, members=members, version="")

    def with_metrics(self, extra: dict) -> Predictor:
        return dataclasses.replace(self, metrics={**self.metrics, **extra})

    # -- checks -------------------------------------------------------------------------

    def check_space(self, space: FactorSpace) -> None:
        """ValueError unless its predictions may sit beside the ALS factors of ``space``
        (factors that name no space are taken on trust)."""
        if space.id is not None:
            model_file.check_factor_space(self.factor_space, self.source, space.id, space.where)

    def check_mels(self, params: dict, where: str) -> None:
        """ValueError unless spectrograms made with ``params`` (found at ``where``) are
        what its members learned from."""
        if MelParams.from_dict(params) != MelParams.from_dict(self.mel_params):
            raise ValueError(f"{where}: mel parameters {params} differ from the model's "
                             f"{self.mel_params} ({self.source})")

    # -- predicting ---------------------------------------------------------------------

    def known_inputs(self) -> dict[str, MelParams]:
        """Every input a member may read, by name (Member.input): its own ``mel_params``,
        and the taggers' input made with them."""
        own = MelParams.from_dict(self.mel_params)
        return {"mels": own, "frontend": own.frontend()}

    def inputs(self) -> dict[str, dict]:
        """The spectrograms its members read, by input name, as MelParams dicts."""
        known = self.known_inputs()
        return {m.input: known[m.input].to_dict() for m in self.members}

    def _matching(self, excerpts: Sequence[Excerpts]) -> dict[str, Excerpts]:
        """The excerpts each input reads; ValueError when one has none or they disagree
        on the tracks."""
        found = {}
        for name, params in self.inputs().items():
            same = [e for e in excerpts if MelParams.from_dict(e.params) == MelParams.from_dict(params)]
            if not same:
                self.check_mels(excerpts[0].params if excerpts else {}, "the excerpts")
                raise ValueError(f"the excerpts: none made with the {name} parameters "
                                 f"{params} that {self.source} reads")
            found[name] = same[0]
        ids = {tuple(e.track_ids) for e in found.values()}
        if len(ids) > 1:
            raise ValueError("the excerpts of the model's inputs are of different tracks")
        return found

    @torch.no_grad()
    def predict(self, excerpts: Excerpts | Sequence[Excerpts], space: FactorSpace,
                tokens: metadata.Tokens | None = None, batch_size: int = 64) -> np.ndarray:
        """Factors (n, rank) float32 of ``excerpts`` (one Excerpts per input the members
        read, of the same tracks), the mean of the members'.

        ``tokens``: the catalogue's (metadata.read_tokens), needed when a member reads
        them. Batches go to the predictor's device; on a GPU the networks run in bf16
        autocast, the taste statistics in float32."""
        self.check_space(space)
        by_input = self._matching([excerpts] if isinstance(excerpts, Excerpts) else excerpts)
        for member in self.members:
            member.check(self.source)
        first = next(iter(by_input.values()))
        vocab = self.vocabulary
        if vocab and tokens is None:
            raise ValueError(f"{self.source}: the model reads catalogue metadata (artist, genre, "
                             "tags): give it the catalogue")
        token_ids = metadata.token_ids(vocab, tokens, first.track_ids, self.withheld) \
            if vocab else None
        if not len(first.mels):
            return np.zeros((0, self.n_factors), np.float32)
        total = np.zeros((len(first.mels), self.n_factors), np.float32)
        for member in self.members:
            mels = by_input[member.input].mels
            for i in range(0, len(mels), batch_size):
                # a copy: the values may be a read-only view of Arrow's memory
                mel = torch.tensor(mels[i:i + batch_size]).to(self.device, non_blocking=True)
                ids = None if token_ids is None else \
                    torch.from_numpy(token_ids[i:i + batch_size]).to(self.device)
                total[i:i + len(mel)] += member.predict(mel, ids)
        return total / len(self.members)

    def predict_tracks(self, shards: Sequence[Path], track_ids: Sequence[str],
                       space: FactorSpace, tokens: metadata.Tokens | None = None
                       ) -> tuple[list[str], np.ndarray]:
        """Predicted factors of ``track_ids`` found in the shards, one row group at a time.

        ``shards`` may hold spectrograms of several settings (the taggers' input beside
        the predictor's own): each input is read from the shards made with its
        settings, and a track is predicted when every input has it. Returns (ids in the
        order found, factors (n, rank)); memory is bounded by a row group, whatever the
        catalogue's size (a track in several shards is predicted once)."""
        self.check_space(space)
        inputs = self.inputs()
        by_input: dict[str, list[Path]] = {name: [] for name in inputs}
        other: dict[str, Path] = {}  # shards of settings no member reads, by settings
        for shard in shards:
            params = MelParams.from_dict(schemas.params_of(_shard_schema(shard)))
            name = next((n for n, p in inputs.items() if params == MelParams.from_dict(p)), None)
            if name is None:
                other.setdefault(json.dumps(params.to_dict(), sort_keys=True), shard)
            else:
                by_input[name].append(shard)
        missing = [name for name, found in by_input.items() if not found]
        if missing and shards:
            if other:
                shard = next(iter(other.values()))
                self.check_mels(schemas.params_of(pq.read_schema(shard)), str(shard))
            raise ValueError(f"{self.source} reads spectrograms made with "
                             f"{inputs[missing[0]]} ({missing[0]}); none of the {len(shards)} "
                             "shards given has them")
        sums: dict[str, np.ndarray] = {}
        for member in self.members:
            alone = dataclasses.replace(self, members=(member,), version=self.version)
            for ids, factors in _row_groups(by_input[member.input], set(track_ids), alone,
                                            space, tokens):
                for track, row in zip(ids, factors):
                    sums.setdefault(track, [np.zeros_like(row), 0])
                    sums[track][0] += row
                    sums[track][1] += 1
        found = [t for t, (_, n) in sums.items() if n == len(self.members)]
        return found, (np.stack([sums[t][0] / len(self.members) for t in found]) if found
                       else np.zeros((0, self.n_factors), np.float32))

    # -- the file -----------------------------------------------------------------------

    def save(self, path: Path) -> str:
        """Write the model file atomically (schemas/model_file.py); returns the version."""
        raw = {"format": model_file.FORMAT, "version": self.version,
               "mel_params": self.mel_params, model_file.FACTOR_SPACE: self.factor_space,
               "metrics": self.metrics,
               "members": [{"kind": m.kind, **m.state()} for m in self.members]}
        # through a file object: torch.save names the archive's records after a path's
        # (temporary) name, and the same model should be the same bytes
        with storage.atomic_file(path) as tmp, open(tmp, "wb") as out:
            torch.save(raw, out)
        return self.version

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Predictor:
        """The predictor of a model file of any format this version reads, its members
        on ``device``; ValueError naming ``path`` for anything else."""
        device = torch.device(device)
        raw = load_weights(path, device)
        model_file.check(raw, path)
        stored = raw["members"] if raw.get("format", 1) >= 6 else legacy_members(raw)
        members = []
        for state in stored:
            if state.get("kind") not in MEMBERS:
                raise ValueError(f"{path}: a member of kind {state.get('kind')!r}, which this "
                                 f"version of the pipeline does not know ({sorted(MEMBERS)})")
            members.append(MEMBERS[state["kind"]].from_state(state, device))
        return cls(tuple(members), raw["mel_params"], raw.get(model_file.FACTOR_SPACE),
                   raw["metrics"], raw["version"], device=device, source=str(path))


def _shard_schema(shard: Path) -> pa.Schema:
    """A shard's schema; a file that is not one names itself (pyarrow's error does not)."""
    try:
        return pq.read_schema(shard)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{shard}: not a readable spectrogram shard: {err}") from err


def _row_groups(shards: Sequence[Path], wanted: set[str], predictor: Predictor,
                space: FactorSpace, tokens: metadata.Tokens | None):
    """(ids, factors) of the wanted tracks, one row group of ``shards`` at a time, each
    track once (its first row); ``predictor`` has one input."""
    wanted = set(wanted)
    for shard in shards:
        reader = pq.ParquetFile(shard)
        params = schemas.params_of(reader.schema_arrow)
        for group in range(reader.metadata.num_row_groups):
            if not wanted:
                return
            names = reader.read_row_group(group, columns=["track_id"])["track_id"].to_pylist()
            first: dict[str, int] = {}  # each wanted track's first row, in shard order
            for i, track in enumerate(names):
                if track in wanted:
                    first.setdefault(track, i)
            if not first:
                continue
            found = list(first)
            table = mel_schema.conform(reader.read_row_group(group)).take(
                [first[t] for t in found])
            for member in predictor.members:
                member.recall(shard, table)
            yield found, predictor.predict(Excerpts.of(table, params), space, tokens)
            wanted -= set(found)


def legacy_members(raw: dict) -> list[dict]:
    """The members of a model file of formats 1 to 5: one network (or the baseline) as
    keys of the file, and a taste classifier beside it from format 4 on."""
    config = raw["net_config"]
    members = [{"kind": Bow.kind if config.get("arch") == Bow.kind else Network.kind,
                "config": config, "weights": raw["state"], "factor_scale": raw["factor_scale"],
                "unit_output": raw["unit_output"]}]
    if raw.get("taste"):
        # without a held-out fit on record, the classifier is judged as it is
        members.append({"kind": Taste.kind, "arrays": raw["taste"],
                        "held_out": raw.get("taste_held_out", raw["taste"])})
    return members
