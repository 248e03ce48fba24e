"""The run report: what a run did, how good it is, what the network learned.

    python -m jobs.report --run DATA_ROOT/runs/<run id> [--labels truth.parquet:style]

Writes <run>/report/ (replacing an older one): index.html, self-contained (images
inline), and the same as report.md with its PNGs. Sections: the data (counts, the
popularity curve, everything set aside and why), ALS (settings, time, held-out score),
training curves, the evaluation with its slices, a t-SNE map of warm and predicted cold
factors, similar tracks for a few cold ones with every track's top tags from the
pretrained taggers (and the tags most common among cold and warm tracks), and what
the shipped network's filters and dense units respond to; then each stage with its
time and key figure, which the job also prints as a one-screen summary. The catalogue
and plays default to those the run's published snapshot records (--catalogue, --plays
otherwise); --labels colours the map by a column of another table (the demo's styles)
instead of the artist.
"""
