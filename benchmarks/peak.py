"""The peak resident memory of the benchmark's own process."""
from __future__ import annotations

from pathlib import Path


def peak_mib() -> float:
    """This process's high-water mark (VmHWM), in MiB. getrusage's maxrss would count the
    parent's memory too, which a child has between fork and exec."""
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return int(status.split()[0]) / 1024
