"""What an excerpt costs for a short and for a long track: seeking, not decoding all.

    python benchmarks/seek.py --short-s 30 --long-s 1200

Encodes, with PyAV, a short and a long stereo track (a tone over noise) in every
format the spectrogram job reads, then times decode_excerpt of the middle
--excerpt-s seconds of each (best of --repeat), and for contrast the decoding of
the whole long track. Prints milliseconds per excerpt and the long/short ratio:
about 1 means a long track costs what a short one does.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from jobs.spectrograms.decode import decode_excerpt
from schemas.config import MelParams

# (extension, encoder, sample rate)
FORMATS = [("mp3", "libmp3lame", 44100), ("ogg", "vorbis", 44100), ("opus", "libopus", 48000),
           ("flac", "flac", 44100), ("m4a", "aac", 44100), ("wav", "pcm_s16le", 44100)]
FRAME = 1024


def encode(path: Path, codec: str, rate: int, seconds: float, seed: int = 0) -> Path:
    """A stereo track of ``seconds``: 440 Hz at -10 dBFS over noise, generated frame by frame."""
    rng = np.random.default_rng(seed)
    options = {"strict": "experimental"} if codec == "vorbis" else {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo", options=options)
        for start in range(0, round(seconds * rate), FRAME):
            t = (start + np.arange(FRAME)) / rate
            mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(FRAME)
            frame = av.AudioFrame.from_ndarray(np.tile(mono.astype(np.float32), (2, 1)),
                                               format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def best_ms(path: Path, params: MelParams, repeat: int) -> float:
    decode_excerpt(str(path), params)  # page cache and first-call costs out of the way
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        decode_excerpt(str(path), params)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-s", type=float, default=30.0,
                        help="Length of the short track, seconds. Default: %(default)s.")
    parser.add_argument("--long-s", type=float, default=1200.0,
                        help="Length of the long track, seconds. Default: %(default)s.")
    parser.add_argument("--excerpt-s", type=float, default=MelParams().excerpt_s,
                        help="Excerpt length, seconds. Default: %(default)s.")
    parser.add_argument("--repeat", type=int, default=5,
                        help="Timed decodes of each excerpt; the best counts. "
                             "Default: %(default)s.")
    args = parser.parse_args(argv)

    excerpt = MelParams(excerpt_s=args.excerpt_s)
    whole = MelParams(excerpt_s=0)
    print(f"{args.excerpt_s:g} s excerpt of a {args.short_s:g} s and a {args.long_s:g} s "
          f"stereo track; best of {args.repeat}")
    print(f"{'format':8}{'short ms':>10}{'long ms':>10}{'long/short':>12}{'whole long ms':>15}")
    with tempfile.TemporaryDirectory(prefix="bench-seek-") as scratch:
        for ext, codec, rate in FORMATS:
            short = encode(Path(scratch) / f"short.{ext}", codec, rate, args.short_s)
            long = encode(Path(scratch) / f"long.{ext}", codec, rate, args.long_s)
            short_ms = best_ms(short, excerpt, args.repeat)
            long_ms = best_ms(long, excerpt, args.repeat)
            whole_ms = best_ms(long, whole, 1)
            print(f"{ext:8}{short_ms:10.1f}{long_ms:10.1f}{long_ms / short_ms:12.2f}"
                  f"{whole_ms:15.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
