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


def network_section(files: RunFiles, names) -> Section:
    section = Section("What the network learned")
    if not files.chosen:
        section.text("This run shipped no model.")
        return section
    network = Predictor.load(files.chosen).member("network")
    if network is None:
        section.text("The shipped predictor is the bag-of-words baseline: it has no filters.")
        return section
    model = network.module
    table = read_mels(layout.mel_shards(files.mels)).slice(0, TRACKS)
    if table.num_rows < TOP:
        section.text("Too few spectrograms to show what the network responds to.")
        return section
    ids = table["track_id"].to_pylist()
    peak, mean, dense = activations(model, mel_array(table))
    weights = model.conv[0].weight.detach().numpy()  # filters x mel bands x kernel
    filters = np.argsort(-mean.std(axis=0))[:SHOWN]
    figure, axes = plt.subplots(1, len(filters), figsize=(2.2 * len(filters), 3.5))
    for ax, f in zip(np.atleast_1d(axes), filters):
        ax.imshow(weights[f], aspect="auto", origin="lower", cmap="RdBu_r")
        ax.set(title=f"filter {f}", xlabel="time step", ylabel="mel band")
    section.figure("filters.png", "weights of the first-layer filters shown below "
                   "(mel band against time step)", figure)
    for f in filters:
        section.text(f"First-layer filter {f}: the tracks it responds to most.")
        section.table(["by max over time", "by mean over time"],
                      [[names(ids[a]), names(ids[b])] for a, b in
                       zip(np.argsort(-peak[:, f])[:TOP], np.argsort(-mean[:, f])[:TOP])])
    for unit in np.argsort(-dense.std(axis=0))[:SHOWN // 2]:
        section.text(f"Dense unit {unit} of the last hidden layer: the tracks that activate it most.")
        section.table(["track", "activation"],
                      [[names(ids[i]), float(dense[i, unit])] for i in np.argsort(-dense[:, unit])[:TOP]])
    section.text(f"Measured on {len(ids)} tracks' spectrograms.")
    return section
