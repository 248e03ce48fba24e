"""The validated search that set scoring's semi-cold settings (benchmarks/semicold_search.py)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_evaluate import semicold_case

# a benchmark is a script beside the package, not part of it: loaded from its file
_spec = importlib.util.spec_from_file_location(
    "semicold_search", Path(__file__).resolve().parent.parent / "benchmarks" / "semicold_search.py")
search = sys.modules.setdefault("semicold_search", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(search)


def test_semi_cold_blend_follows_good_audio_and_ignores_bad_audio():
    from jobs.evaluate.semicold import REVEALED
    FOLDS, LAMBDAS, SPLITS = search.FOLDS, search.LAMBDAS, search.SPLITS

    users, heldout, ids, truth, rng = semicold_case()
    als = {"alpha": 10.0, "eps": 1.0, "reg": 0.1}
    good = search.search(users, heldout, ids, truth * 3, als, 10, 5, seed=0)
    assert [b["revealed"] for b in good["buckets"]] == list(REVEALED)
    one = good["buckets"][0]
    labels = {f"{lam:g}" for lam in LAMBDAS}
    assert one["lambda"] in labels and set(one["validation_auc_by_lambda"]) == labels
    assert one["test_folds"] == FOLDS * SPLITS and 0 < one["tracks"] <= len(ids)
    assert one["blend"]["auc"] >= one["als"]["auc"]
    noise = rng.normal(size=truth.shape).astype(np.float32)
    bad = search.search(users, heldout, ids, noise, als, 10, 5, seed=0)
    assert all(float(b["lambda"]) < float(g["lambda"])
               for b, g in zip(bad["buckets"], good["buckets"]))
    ten = bad["buckets"][-1]
    assert ten["blend"]["auc"] > ten["audio"]["auc"] + 0.1


def test_semi_cold_choice_moves_least_from_the_audio_unless_the_validation_sees_a_gain():
    LAMBDAS, Validation, choose = search.LAMBDAS, search.Validation, search.choose
    from schemas.metrics import auc, mean_auc

    rng = np.random.default_rng(0)
    relevant = rng.random((200, 12)) < 0.3
    signal = relevant + rng.normal(scale=1.5, size=relevant.shape)
    users = [u for u in range(200) if 0 < relevant[u].sum() < 12]
    assert mean_auc(signal, relevant) == pytest.approx(
        np.mean([auc(signal[u][relevant[u]], signal[u][~relevant[u]]) for u in users]))
    tracks = [f"t{j}" for j in range(12)]

    def half(at_one: np.ndarray) -> Validation:
        """Every lambda scores as the audio (``signal``) but lambda 1, which scores
        ``at_one``; a smaller lambda moves the factors further."""
        return Validation(tracks, {lam: at_one if lam == 1.0 else signal for lam in LAMBDAS}, relevant,
                    {lam: 0.0 if np.isinf(lam) else 1.0 / lam for lam in LAMBDAS})

    # better on these tracks by luck, a shift of one track's scores: the audio is kept
    lucky = signal + 0.5 * (np.arange(12) == int(np.argmax(relevant.sum(axis=0))))
    (m, lam), by_bucket = choose({1: half(lucky), 10: half(lucky)})
    assert by_bucket[10][1.0] > by_bucket[10][np.inf] and lam == np.inf
    # clearly better with 10 plays, clearly worse with 1: blend from 10 plays on
    (m, lam), _ = choose({1: half(signal - 3.0 * relevant), 10: half(signal + 3.0 * relevant)})
    assert (m, lam) == (10, 1.0)
