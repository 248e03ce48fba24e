"""What the shipped network responds to: for a few first-layer filters and top dense
units, the tracks that activate them most (max and mean over time), as the 2014
Spotify post shows them, and the filters' weights as images."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from model.predictor import Predictor
from model.data import mel_array, read_mels
from schemas import layout
from jobs.report.gather import RunFiles
from jobs.report.render import Section

TRACKS = 200  # tracks whose activations are measured
SHOWN = 4  # filters (and dense units) shown: those whose activation varies most
TOP = 5  # tracks listed for each


def activations(model, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per track: (first-layer max over time, its mean over time: tracks x filters,
    last hidden dense layer averaged over the track's windows: tracks x units)."""
    first = model.conv[0]
    hidden = []
    hook = model.head[-2].register_forward_hook(lambda m, i, out: hidden.append(out.mean(dim=0)))
    peak, mean = [], []
    with torch.no_grad():
        for mel in mels:
            x = torch.from_numpy(mel[None])
            response = torch.relu(first(model.standardise(x)))[0]  # filters x time
            peak.append(response.amax(dim=1).numpy())
            mean.append(response.mean(dim=1).numpy())
            model(x)
    hook.remove()
    return np.array(peak), np.array(mean), torch.stack(hidden).numpy()


def selectivity(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each filter's selectivity, each track's share of its response per filter).

    A loud track drives every filter harder; dividing a track's mean response per filter
    by its total over the filters leaves what the track makes each filter do relative to
    the others. A filter is selective when that share is uneven across tracks: its
    coefficient of variation over tracks."""
    share = mean / np.maximum(mean.sum(axis=1, keepdims=True), 1e-12)
    spread = share.std(axis=0) / np.maximum(share.mean(axis=0), 1e-12)
    return spread, share


def draw_filters(weights: np.ndarray, filters: np.ndarray, scores: np.ndarray):
    """The filters' weights side by side on one colour scale centred on zero, with its bar."""
    limit = float(np.abs(weights[filters]).max()) or 1.0
    figure, axes = plt.subplots(1, len(filters), figsize=(2.4 * len(filters) + 1.2, 3.6),
                                sharey=True, constrained_layout=True)
    axes = np.atleast_1d(axes)
    for ax, f in zip(axes, filters):
        image = ax.imshow(weights[f], aspect="auto", origin="lower", cmap="RdBu_r",
                          vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"filter {f}\nselectivity {scores[f]:.2f}", fontsize=9)
        ax.set_xlabel("time step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("mel band", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.9, label="weight (0 = white)")
    return figure


def network_section(files: RunFiles, names) -> Section:
    section = Section("What the network learned")
    if not files.chosen:
        section.text("This run shipped no model.")
        return section
    network = Predictor.load(files.chosen).member("network")
    if network is None:
        section.text("The shipped predictor has no network of its own (the bag-of-words "
                     "baseline, or the pretrained taggers with a head): it has no filters to show.")
        return section
    model = network.module
    table = read_mels(layout.mel_shards(files.mels)).slice(0, TRACKS)
    if table.num_rows < TOP:
        section.text("Too few spectrograms to show what the network responds to.")
        return section
    ids = table["track_id"].to_pylist()
    peak, mean, dense = activations(model, mel_array(table))
    weights = model.conv[0].weight.detach().numpy()  # filters x mel bands x kernel
    scores, share = selectivity(mean)
    filters = np.argsort(-scores)[:SHOWN]
    section.figure("filters.png", "weights of the most selective first-layer filters (mel "
                   "band against time step; red positive, blue negative, on one scale)",
                   draw_filters(weights, filters, scores))
    section.text("Filters are shown by selectivity: how unevenly tracks drive a filter once "
                 "each track's response is divided by its total over all filters, so that "
                 "loudness alone does not rank it (coefficient of variation over tracks).")
    for f in filters:
        section.text(f"First-layer filter {f}: the tracks that drive it most.")
        section.table(["by peak response", "by share of the track's response"],
                      [[names(ids[a]), names(ids[b])] for a, b in
                       zip(np.argsort(-peak[:, f])[:TOP], np.argsort(-share[:, f])[:TOP])])
    for unit in np.argsort(-dense.std(axis=0))[:SHOWN // 2]:
        section.text(f"Dense unit {unit} of the last hidden layer: the tracks that activate it most.")
        section.table(["track", "activation"],
                      [[names(ids[i]), float(dense[i, unit])] for i in np.argsort(-dense[:, unit])[:TOP]])
    section.text(f"Measured on {len(ids)} tracks' spectrograms.")
    return section
