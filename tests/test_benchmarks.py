"""The benchmark that needs a GPU runs here on the CPU, at small sizes, so that it is
known to work when a GPU appears (its figures are not checked: they are a machine's)."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_trains_under_torchrun_and_scores_on_the_cpu(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DIR=str(tmp_path / "shards"), TRACKS="48", FRAMES="200", STEPS="3", BATCH="4",
               WORKERS="1", NPROC="2")
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "device: cpu x 2" in out and "clip 200 frames" in out
    for figure in (r"clips/s: [\d.]+", r"data loader share of step time: [\d.]+%",
                   r"model GFLOP per clip \(fwd\+bwd\): [\d.]+",
                   r"48 tracks in \d+ shards on cpu, network and taste classifier: .* tracks/s"):
        assert re.search(figure, out), (figure, out)
