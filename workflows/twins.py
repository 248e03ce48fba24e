"""Taking an output another run already computed, instead of computing it again."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import luigi

from schemas import storage
from workflows.fingerprints import content_digest
from workflows.locations import root

# luigi's own logger: `luigi --module workflows` shows what it logs.
logger = logging.getLogger("luigi-interface")


def adopt_twin(task: luigi.Task) -> bool:
    """Take ``task``'s output from another run, when one computed it (same name, so
    same fingerprint) from the same inputs: hard links, written atomically; the other
    run's retention then removes only its own links. Whether there was one."""
    out = Path(task.output().path)
    if out.exists():  # its inputs, known only now, are ones an earlier run used
        return True
    made_here = _inputs_made_in(task, out.parent)
    twins = sorted((path for path in root().outputs_named(out.name)
                    if path.parent.name != task.run_id and _same_inputs(path.parent, made_here)),
                   key=lambda path: path.stat().st_mtime)
    if not twins:
        return False
    twin = twins[-1]
    logger.info("%s: the same output exists in run %s; linking it", task, twin.parent.name)
    if twin.is_dir():
        with storage.atomic_dir(out) as tmp:
            shutil.copytree(twin, tmp, copy_function=os.link, dirs_exist_ok=True)
    else:
        with storage.atomic_file(out) as tmp:
            os.link(twin, tmp)
    return True


def _inputs_made_in(task: luigi.Task, run: Path) -> list[Path]:
    """The inputs ``task`` computes from that its own run made."""
    inputs = task.data_inputs()  # a RunTask's; None: all of them
    targets = luigi.task.flatten(task.input() if inputs is None else inputs)
    return [Path(target.path) for target in targets if Path(target.path).parent == run]


def _same_inputs(run: Path, inputs: list[Path]) -> bool:
    """Whether ``run`` made ``inputs`` alike, byte for byte. Names alone do not say it:
    two runs that fit the same ALS at once each draw their own factor space, and a
    model trained on one of them cannot serve the other."""
    return all(content_digest(run / path.name) == content_digest(path) for path in inputs)
