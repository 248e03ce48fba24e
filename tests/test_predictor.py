"""The shipped predictor: an ensemble of members behind one predict, saved as one file."""
import numpy as np
import pytest
import torch

from model.member import Member
from model.net import NetConfig, Network, build_net
from model.predictor import MEMBERS, Excerpts, FactorSpace, Predictor
from schemas.config import MelParams

PARAMS = MelParams(n_mels=16).to_dict()
SPACE = FactorSpace("night", "item factors")


class Offset(Member):
    """A member of a kind the pipeline does not ship: the same factors for every track."""

    kind = "offset"

    def __init__(self, factors: torch.Tensor):
        self.factors = factors

    @property
    def n_factors(self) -> int:
        return len(self.factors)

    def predict(self, mel, tokens):
        return self.factors.expand(len(mel), -1).numpy().copy()

    def tensors(self):
        return {"factors": self.factors}

    def state(self):
        return {"factors": self.factors}

    @classmethod
    def from_state(cls, state, device):
        return cls(state["factors"])


def network() -> Network:
    torch.manual_seed(0)
    config = NetConfig(arch="dieleman2014", n_mels=16, n_factors=4, channels=(4, 4, 4, 4),
                       dense=8)
    return Network(build_net(config), 1.0, False)


def excerpts(n: int = 5) -> Excerpts:
    mels = np.random.default_rng(0).normal(size=(n, 16, 140)).astype(np.float32)
    return Excerpts([f"t{i}" for i in range(n)], mels, PARAMS)


def test_a_new_kind_of_member_joins_the_ensemble_by_registering_alone(tmp_path, monkeypatch):
    """A new member is its own class and one entry in MEMBERS: saving, loading, the
    version and the average need nothing else."""
    monkeypatch.setitem(MEMBERS, Offset.kind, Offset)
    offset = Offset(torch.tensor([4.0, 0.0, 0.0, -4.0]))
    alone = Predictor((network(),), PARAMS, "night")
    both = Predictor((network(), offset), PARAMS, "night", {"loss": "mse"})
    assert both.version != alone.version  # the version hashes every member
    both.save(tmp_path / "model.pt")

    loaded = Predictor.load(tmp_path / "model.pt")
    assert loaded.kinds == ("network", "offset") and loaded.version == both.version
    got = loaded.predict(excerpts(), SPACE)
    np.testing.assert_allclose(got, (alone.predict(excerpts(), SPACE) + offset.factors.numpy()) / 2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.without("offset").predict(excerpts(), SPACE),
                               alone.predict(excerpts(), SPACE), rtol=1e-6)

    # a pipeline that does not know the kind refuses the file, naming it
    monkeypatch.delitem(MEMBERS, Offset.kind)
    with pytest.raises(ValueError, match=r"model.pt: a member of kind 'offset'"):
        Predictor.load(tmp_path / "model.pt")


def test_prediction_checks_run_inside_predict():
    predictor = Predictor((network(),), PARAMS, "night")
    assert predictor.predict(excerpts(0), SPACE).shape == (0, 4)
    with pytest.raises(ValueError, match="learned the factor space night but elsewhere is in day"):
        predictor.predict(excerpts(), FactorSpace("day", "elsewhere"))
    with pytest.raises(ValueError, match="mel parameters"):
        predictor.predict(Excerpts(["a"], excerpts(1).mels, MelParams(n_mels=16, hop_length=256)
                                   .to_dict()), SPACE)
    with pytest.raises(ValueError, match="needs at least one member"):
        Predictor((), PARAMS, "night")
