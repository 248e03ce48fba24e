"""What luigi takes from this package before it runs anything: exit codes and a lock
per data root."""
from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
from pathlib import Path

import luigi
import luigi.lock

from schemas import layout

# luigi's own logger: `luigi --module workflows` shows what it logs.
logger = logging.getLogger("luigi-interface")

# Exit codes of `luigi --module workflows ...`, so that a scheduler sees every failure
# even when no luigi.cfg is found; a luigi.cfg [retcode] section overrides them.
RETCODES = {"already_running": 10, "missing_data": 20, "not_run": 25, "task_failed": 30,
            "scheduling_error": 35, "unhandled_exception": 40}


def lock_dir(root: Path) -> Path:
    """Where luigi keeps its pid lock for runs on data root ``root``.

    Luigi refuses a second process with the same command line while one runs; one
    lock directory per data root makes that "the same command on the same data",
    so pipelines on different data roots run side by side.
    """
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"luigi-coldstart-{digest}"


def configure_luigi() -> None:
    """Defaults luigi takes from configuration: exit codes and the lock directory.

    Called when `luigi --module workflows` imports this package, before luigi reads
    them; values set in luigi.cfg win.
    """
    config = luigi.configuration.get_config()
    for section in ("retcode", "core"):
        if not config.has_section(section):
            config.add_section(section)
    for key, code in RETCODES.items():
        if not config.has_option("retcode", key):
            config.set("retcode", key, str(code))
    if not config.has_option("core", "lock_pid_dir"):
        config.set("core", "lock_pid_dir", str(lock_dir(layout.data_root())))
    explain_lock(Path(config.get("core", "lock_pid_dir")))


def explain_lock(pid_dir: Path) -> None:
    """Say why luigi is about to refuse this run, when another one holds its lock."""
    if "--no-lock" in sys.argv:
        return
    my_pid, my_cmd, pid_file = luigi.lock.get_info(str(pid_dir))
    try:
        pids = {int(line) for line in Path(pid_file).read_text().split()}
    except (OSError, ValueError):
        return
    running = sorted(pid for pid in pids if pid != my_pid and luigi.lock.getpcmd(pid) == my_cmd)
    if running:
        logger.error("refused: the same command is already running on data root %s (pid %s); "
                     "two runs on one data root would redo and overwrite each other's work. "
                     "A run on another data root (COLDSTART_DATA_ROOT) is not blocked.",
                     layout.data_root(), ", ".join(map(str, running)))
