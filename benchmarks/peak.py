"""The peak resident memory of the benchmark's own process."""
from __future__ import annotations

import resource
from pathlib import Path


def peak_mib() -> float:
    """This process's high-water mark (VmHWM), in MiB. getrusage's maxrss would count the
    parent's memory too, which a child has between fork and exec."""
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return int(status.split()[0]) / 1024


def children_peak_mib() -> float:
    """The largest high-water mark of this process's finished children (local Beam
    workers, say), in MiB: getrusage's maxrss, which may include pages the child still
    shared with this process before it exec'd, so an upper bound."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
