"""What a task's output depends on, as a short hash that its output's name carries.

Output names carry a fingerprint of the task's parameters, its inputs' names and the
content of the user's catalogue and plays, so changing a setting or an input re-runs
everything downstream of it instead of reusing stale results, and an unchanged input
re-runs nothing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path

import luigi

from schemas import layout, storage
from workflows.locations import root


def content_digest(path: str | os.PathLike) -> str:
    """sha1 of a file's bytes, or of a directory's visible files (names and bytes);
    "missing" when there is nothing there.

    Kept in DATA_ROOT/.cache/digests.json by path, size and modification time, so an
    input is read once per change, and one that is touched but unchanged keeps its
    digest (and nothing downstream of it runs again).
    """
    path = Path(path)
    files = (sorted(p for p in path.rglob("*") if p.is_file()
                    and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
             if path.is_dir() else [path] if path.exists() else [])
    if not files:
        return "missing"
    cache_file = layout.data_root() / ".cache" / "digests.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    combined, changed = hashlib.sha1(), False
    for file in files:
        stat = file.stat()
        key, stamp = str(file.resolve()), [stat.st_size, stat.st_mtime_ns]
        if cache.get(key, [None])[:2] != stamp:
            digest = hashlib.sha1()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            cache[key], changed = stamp + [digest.hexdigest()], True
        combined.update(f"{file.relative_to(path) if path.is_dir() else ''}:{cache[key][2]}"
                        .encode())
    if changed:
        storage.write_text(cache_file, json.dumps(cache))
    return combined.hexdigest()


# What luigi's input() and output() return: a target, or a dict or list of them.
Targets = luigi.Target | dict | list


def fingerprint(task: luigi.Task, external: Targets, inputs: Targets | None = None) -> str:
    """Short hash of what a task's output depends on, whatever run it belongs to.

    Its significant parameters but the run id; the content of the inputs nothing in
    the pipeline makes (``external``: the targets of the catalogue and plays), which
    can change in place; and for every other input (``inputs``, default all the
    task's) its name, which carries that input's own fingerprint (spectrograms: their
    parameters, since every run of them adds to one set). Two runs whose task has the
    same fingerprint would compute the same output.
    """
    inputs = [target.path for target in luigi.task.flatten(
        task.input() if inputs is None else inputs)]
    external = {target.path for target in luigi.task.flatten(external)}
    contents = [content_digest(path) for path in sorted(set(inputs) & external)]
    params = {name: value for name, value in task.to_str_params(only_significant=True).items()
              if name != "run_id"}
    names = sorted(_stable_name(Path(path)) for path in set(inputs) - external)
    text = json.dumps([task.get_task_family(), params, names, contents], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _stable_name(path: Path) -> str:
    """An input's name without the run it came from."""
    mels = root().mels
    if mels in path.parents:
        return str(path.relative_to(mels).parts[0])  # the spectrograms' parameter hash
    return path.name


def with_installed_versions(fingerprint: str) -> str:
    """``fingerprint`` combined with the installed packages' versions: a report on the
    environment is stale when any of them changes."""
    return hashlib.sha1(json.dumps([installed_versions(), fingerprint]).encode()).hexdigest()[:10]


def installed_versions() -> list[tuple[str, str]]:
    """(name, version) of every installed distribution, sorted. Reading them all takes
    a fifth of a second, and every task's output path asks for the preflight's: they
    are read again only when a folder they are installed in changes (an install or an
    uninstall adds or removes a folder there)."""
    folders = tuple((entry, os.stat(entry).st_mtime_ns) for entry in sys.path
                    if entry and os.path.isdir(entry))
    return _versions_in(folders)


@functools.lru_cache(maxsize=4)
def _versions_in(folders: tuple) -> list[tuple[str, str]]:
    return sorted((dist.metadata["Name"], dist.version) for dist in metadata.distributions())
