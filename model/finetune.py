"""The pretrained musicnn tagger fine-tuned to predict factors: an architecture option.

``musicnn`` in NetConfig.arch: the MSD tagger (model/musicnn.py), its weights the
wheel's to start from, with its tag layer replaced by a dense layer from its 200-unit
penultimate layer to the factors. It reads the taggers' input (the spectrogram job's
second output), not the network's own spectrograms; it trains under model.train's
DDP like the networks trained from scratch, on 3-second crops (the taggers' input
length), and predicts a longer excerpt as the mean over its consecutive 3-second
patches. Its input keeps the tagger's own batch normalisation, not the training set's
band statistics, so that the pretrained filters see what they were trained on.
"""
from __future__ import annotations

import torch
from torch import nn

from model import musicnn
from model.net import FactorNet, NetConfig

TAGGER = "MSD_musicnn"  # trained on the larger dataset; MTT is the other choice


class FineTuned(FactorNet):
    """musicnn's front, mid and back ends, and a dense layer to the factors."""

    def __init__(self, config: NetConfig, pretrained: bool = False):
        super().__init__(config)
        if config.n_mels != musicnn.N_MELS:
            raise ValueError(f"the musicnn tagger reads {musicnn.N_MELS} mel bands, not "
                             f"{config.n_mels}: train it on the taggers' input")
        self.tagger = musicnn.load(TAGGER) if pretrained else musicnn.MusiCNN()
        # the tag layer is not used: frozen, so that DDP does not wait for its gradients
        self.tagger.backend.output.requires_grad_(False)
        self.out = nn.Sequential(nn.Dropout(config.dropout),
                                 nn.Linear(musicnn.PENULTIMATE_FEATURES, config.n_factors))

    def standardise(self, mel: torch.Tensor) -> torch.Tensor:
        return mel.float()  # the tagger's input norm standardises

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        def predict(clips: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
            return self.out(self.tagger(self.standardise(clips).transpose(1, 2)).penultimate)
        if self.training or mel.shape[2] < 2 * musicnn.PATCH_FRAMES:
            return predict(mel, None)
        return self.averaged(mel, None, musicnn.PATCH_FRAMES, predict)
