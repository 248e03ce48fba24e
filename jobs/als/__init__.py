"""Stage 1, ALS: implicit-feedback factors of users and tracks from their plays, with Spark.

    job.py      the ALS job: validating and quarantining plays, the fit, its tables
    foldin.py   a night's plays folded into an earlier refit's factor space
    holdout.py  how well the factors rank plays they never saw (a per-user hold-out)

Runs as ``python -m jobs.als --help`` or ``spark-submit jobs/als/job.py --help`` (and
``spark-submit jobs/als/holdout.py``), with this package installed in the Python that
Spark runs.
"""
