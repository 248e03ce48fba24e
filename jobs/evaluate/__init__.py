"""The evaluation's stage family: judging predictors on tracks they never learned.

- judge.py: the one judge, predictors and a held-out split in, the metrics table out;
- job.py: the paper's evaluation of every method on held-out tracks
  (`python -m jobs.evaluate`), with its semi-cold part (semicold.py);
- choose.py: the predictor to ship, judged on training's validation tracks
  (`python -m jobs.evaluate.choose`).
"""
