"""Training objectives: what the predicted factors y' of a batch of tracks should do.

- ``mse``: squared error to the unit-normalised ALS factors (Dieleman 2014; paper eq. 4).
- ``cosine``: 1 - cos(y', y), indifferent to the prediction's norm (Nieto 2017).
- ``wpe``: the weighted prediction error of the WMF objective (paper eq. 5),
  sum_u c_ui (p_ui - x_u . y'_i)^2 with the ALS user factors x_u held fixed.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from schemas import feedback



def mse(pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(pred, nn.functional.normalize(target, dim=1))


def cosine(pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return (1 - nn.functional.cosine_similarity(pred, target, dim=1)).mean()


class WeightedPredictionError(nn.Module):
    """Paper eq. 5 for a batch of tracks, in O(batch * (k^2 + plays)) not O(batch * users).

    Over all users, with p_ui = 1 and c_ui = 1 + alpha * log(1 + r_ui / eps) where
    user u played track i, else p_ui = 0 and c_ui = 1:

        sum_u c_ui (p_ui - x_u.y)^2 = y' G y + sum_{u played i} [c_ui (1 - x_u.y)^2 - (x_u.y)^2]

    with G = X^T X (Hu et al. 2008's trick). Divided by the number of users so its
    scale does not grow with the catalogue.

    user_factors: (n_users, k) float32. plays: (n_tracks, n_users) sparse play counts,
    rows in the order of the dataset's track index.
    """

    def __init__(self, user_factors: np.ndarray, plays: sp.csr_matrix, alpha: float, eps: float):
        super().__init__()
        x = torch.from_numpy(np.ascontiguousarray(user_factors, dtype=np.float32))
        self.register_buffer("x", x)
        self.register_buffer("gram", x.T @ x)
        plays = sp.csr_matrix(plays)
        self.register_buffer("indptr", torch.from_numpy(plays.indptr.astype(np.int64)))
        self.register_buffer("users", torch.from_numpy(plays.indices.astype(np.int64)))
        confidence = feedback.confidence(plays.data, alpha, eps)
        self.register_buffer("confidence", torch.from_numpy(confidence.astype(np.float32)))
        self.n_users = len(user_factors)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        dense = ((pred @ self.gram) * pred).sum(dim=1)  # every user as if p = 0, c = 1
        starts, stops = self.indptr[index], self.indptr[index + 1]
        counts = stops - starts
        rows = torch.repeat_interleave(torch.arange(len(index), device=pred.device), counts)
        # positions of each track's plays in the CSR arrays
        offsets = torch.arange(int(counts.sum()), device=pred.device) - \
            torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        slots = starts[rows] + offsets
        xy = (self.x[self.users[slots]] * pred[rows]).sum(dim=1)
        correction = self.confidence[slots] * (1 - xy) ** 2 - xy ** 2
        per_track = dense + torch.zeros_like(dense).index_add(0, rows, correction)
        return per_track.mean() / self.n_users


def wants_unit_targets(loss: str) -> bool:
    """mse and cosine learn directions; wpe learns factors at ALS scale."""
    return loss != "wpe"
