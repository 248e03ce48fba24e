"""The spectrogram job's tagger input is what the taggers were trained on.

The fixture's reference (tests/data/README.md) is librosa's log-mel of a real-music
waveform, made outside the project as musicnn's own code makes it. librosa 0.11 pads
the signal's ends with zeros; the librosa of the taggers' training reflected them, as
torchaudio does, so the two frames at each end (those the padding reaches) differ and
are left out.
"""
from pathlib import Path

import numpy as np
import torch

from jobs.spectrograms.mel import log_mel
from model import musicnn
from schemas.config import MelParams

FIXTURE = Path(__file__).parent / "data" / "musicnn_parity.npz"
EDGE = 2  # frames at each end that the STFT's padding reaches (n_fft / hop / 2 + 1)


def test_the_tagger_input_matches_librosa_where_padding_does_not_reach():
    expected = np.load(FIXTURE)
    samples = expected["waveform"].astype(np.float32) / 32768
    assert int(expected["waveform_sample_rate"]) == MelParams().frontend().sample_rate
    ours = log_mel(samples, MelParams().frontend())
    reference = expected["waveform_log_mel"]
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours[:, EDGE:-EDGE], reference[:, EDGE:-EDGE], atol=1e-4)
    # and the taggers hear the same: tag probabilities within 1e-2 on the whole patch
    net = musicnn.load("MSD_musicnn")
    with torch.inference_mode():
        heard = [net(torch.from_numpy(np.ascontiguousarray(m[:, :musicnn.PATCH_FRAMES].T))[None])
                 .probabilities for m in (ours, reference)]
    assert (heard[0] - heard[1]).abs().max() < 1e-2
