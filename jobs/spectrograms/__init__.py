"""Stage 2, spectrograms: catalogue audio -> log-mel Parquet shards, with Apache Beam.

    decode.py    PyAV decoding of a track's middle excerpt, isolated in a child process
    mel.py       the log-mel spectrogram (torchaudio)
    pipeline.py  the Beam graph: decode, transform, dead letters, Parquet sink
    job.py       running it: incremental runs, the bad-fraction bound, the command line

Runs as ``python -m jobs.spectrograms --help``.
"""
