"""Stage 2, spectrograms: catalogue audio -> log-mel Parquet shards, with Apache Beam.

    decode.py    PyAV decoding of a track's middle excerpt
    pool.py      child processes that run per-track work in isolation (a crash or a
                 hang costs one track)
    mel.py       the log-mel spectrograms (torchaudio) of a track: the main ones, and the
                 pretrained tagger's input from the same samples resampled
    pipeline.py  the Beam graph: each output's spectrograms in child processes, its dead
                 letters, the Parquet sink
    job.py       running it: incremental runs, the bad-fraction bound, the command line

Runs as ``python -m jobs.spectrograms --help``.
"""
