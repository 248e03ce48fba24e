"""Luigi tasks, one per output: inputs -> ALS -> spectrograms -> training -> scoring.

Each task runs a standalone job as a separate process (spark-submit, the Beam
job, torchrun, the scoring job), so every stage stays runnable by hand. Jobs write
their outputs atomically, so an output that exists is complete.

Task parameters are derived from the dataclasses of schemas/config.py
(workflows/settings.py), overridden by luigi.cfg sections named after the task
([TrainAls] rank = 50, ...), and passed to the jobs as the flags the jobs derive from
the same fields. Output names carry a
fingerprint of the task's parameters, its inputs' paths and the catalogue's and
plays' content, so changing a setting or an input re-runs everything downstream of
it instead of reusing stale results, and an unchanged input re-runs nothing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import luigi
import luigi.lock
from luigi.contrib.external_program import ExternalProgramRunError, ExternalProgramTask
from luigi.contrib.spark import SparkSubmitTask

from schemas import layout, storage
from schemas.config import (NO_HOLDOUT, AlsParams, AlsTuning, BowConfig, ChooseConfig,
                            DemoConfig, EvaluateConfig, InputOptions, MelParams, NetworkChoice,
                            PublishConfig, QueryConfig, SemiColdConfig, SpectrogramOptions,
                            TrackHoldout, TrainConfig)
from workflows.settings import config_of, flags, settings

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
logger = logging.getLogger("luigi-interface")

# Exit codes of `luigi --module workflows ...`, so that a scheduler sees every failure
# even when no luigi.cfg is found; a luigi.cfg [retcode] section overrides them.
RETCODES = {"already_running": 10, "missing_data": 20, "not_run": 25, "task_failed": 30,
            "scheduling_error": 35, "unhandled_exception": 40}


class paths(luigi.Config):
    """Where data lives. The data root comes from COLDSTART_DATA_ROOT (default ./data)."""
    catalogue = luigi.OptionalPathParameter(
        default=None, description="catalogue Parquet; default DATA_ROOT/catalogue.parquet")
    plays = luigi.OptionalPathParameter(
        default=None, description="play counts: a Parquet, CSV or triplet file or a directory "
        "of them ([TrainAls] says how to read it); default DATA_ROOT/plays.parquet")


def data_root() -> Path:
    return layout.data_root()


def root() -> layout.DataRoot:
    return layout.DataRoot(data_root())


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
        config.set("core", "lock_pid_dir", str(lock_dir(data_root())))
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
                     data_root(), ", ".join(map(str, running)))


class RunIdParameter(luigi.Parameter):
    """A run's name: one plain path component under DATA_ROOT/runs/, never a way out
    of the data root (schemas.layout.check_run_id)."""

    def normalize(self, x):
        return layout.check_run_id(str(x))


def user_inputs() -> tuple[Path, Path]:
    """(catalogue, plays) a user supplied, configured or at their default place."""
    cfg = paths()
    return Path(cfg.catalogue or root().catalogue), Path(cfg.plays or root().plays)


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
    cache_file = data_root() / ".cache" / "digests.json"
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


def fingerprint(task: luigi.Task, inputs: list | None = None) -> str:
    """Short hash of what a task's output depends on, whatever run it belongs to.

    Its significant parameters but the run id; the content of the inputs nothing in
    the pipeline makes (catalogue, plays), which can change in place; and for every
    other input its name, which carries that input's own fingerprint (spectrograms:
    their parameters, since every run of them adds to one set). Two runs whose task
    has the same fingerprint would compute the same output.
    """
    inputs = [target.path for target in luigi.task.flatten(
        task.input() if inputs is None else inputs)]
    external = {target.path for target in luigi.task.flatten(Inputs().output())}
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


def configured_inputs() -> bool:
    """Whether luigi.cfg names the catalogue or the plays ([paths])."""
    cfg = paths()
    return cfg.catalogue is not None or cfg.plays is not None


def job_environment() -> dict:
    """Child processes use this interpreter and find its scripts (spark-submit, torchrun)."""
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


class JobFailed(RuntimeError):
    """A job's process failed; its own log, streamed above, says why."""


class ChildProcess:
    """Runs the task's job with this interpreter's environment; a failure is reported
    with the command and exit code alone. luigi's own error text carries the whole
    environment, tokens and passwords included, into logs and the scheduler's UI."""
    capture_output = False  # stream the job's own log to the console

    def program_environment(self):
        return job_environment()

    def run(self):
        if self.complete():  # its inputs, known only now, are ones an earlier run used
            return
        started = time.perf_counter()
        try:
            super().run()
        except ExternalProgramRunError as err:
            raise JobFailed(f"{err.message} {' '.join(map(str, err.args))}; its log above "
                            "says why") from None
        self.record_time(time.perf_counter() - started)

    def record_time(self, seconds: float) -> None:
        """One line in the run's stage log, for its report and summary (jobs/report)."""
        run_id = getattr(self, "run_id", None)
        if run_id is None:
            return
        log = root().run(run_id) / layout.STAGE_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"task": self.task_family, "output": Path(self.output().path).name,
                           "seconds": round(seconds, 2)})
        with open(log, "a", encoding="utf-8") as out:  # one short write: whole lines
            out.write(line + "\n")


class JobTask(ChildProcess, ExternalProgramTask):
    """A job run as a child process with this interpreter's environment."""


# The settings each task takes, as parameters derived from schemas/config.py.
Demo = settings(DemoConfig)
# Checkpoints only keep Spark's lineage short; the workflow never offered the interval,
# and a new significant parameter would give every ALS output a new fingerprint.
Als = settings(AlsParams, skip=("checkpoint_interval",))
AlsSpeed = settings(AlsTuning)
PlaysReading = settings(InputOptions)
Split = settings(NO_HOLDOUT)
SemiCold = settings(SemiColdConfig, only=("max_listeners",))
Mels = settings(MelParams)
# [MelSpectrograms] workers is what luigi.cfg files call the job's --decoders.
MelJob = settings(SpectrogramOptions, names={"decoders": "workers"})
Network = settings(NetworkChoice)
# As for ALS: the settings training took from its own defaults stay out, so that the
# models already trained keep their fingerprints.
Training = settings(TrainConfig, skip=("weight_decay", "val_fraction", "taste_tracks", "taste_c"))
Audience = settings(QueryConfig, only=("audience", "user_batch"))
Publishing = settings(PublishConfig)
Candidates = settings(ChooseConfig)
Baseline = settings(BowConfig, only=("codebook",))
# What scoring serves a semi-cold track; the evaluation reports the same blend.
Blend = settings(SemiColdConfig, only=("min_listeners", "reg"))
Evaluation = settings(EvaluateConfig, only=("models", "seed"))
EvaluationSplit = settings(TrackHoldout, only=("fraction",))


class DemoCatalogue(Demo, JobTask):
    """Synthesise the built-in demo catalogue (audio, catalogue, plays, held-out plays)."""

    def output(self):
        return luigi.LocalTarget(root().demo.root)

    def program_args(self):
        return [sys.executable, "-m", "jobs.demo_catalogue", "--out", self.output().path,
                *flags(self, Demo)]


class UserInputs(luigi.Task):
    """A catalogue and play counts the user supplied; nothing makes them, so a
    missing one fails with its path."""

    def output(self):
        catalogue, plays = user_inputs()
        return {"catalogue": luigi.LocalTarget(catalogue), "plays": luigi.LocalTarget(plays)}

    def run(self):
        where = "[paths] in luigi.cfg" if configured_inputs() else f"the data root {data_root()}"
        missing = [f"{name} {target.path}" for name, target in self.output().items()
                   if not target.exists()]
        raise FileNotFoundError(f"{' and '.join(missing)} not found (from {where})")


class Inputs(luigi.WrapperTask):
    """The user's catalogue and plays when luigi.cfg names them or the data root holds
    a catalogue; else the demo catalogue."""

    def uses_demo(self) -> bool:
        return not configured_inputs() and not user_inputs()[0].exists()

    def requires(self):
        return DemoCatalogue() if self.uses_demo() else UserInputs()

    def output(self):
        if not self.uses_demo():
            return self.input()
        demo = layout.DemoFiles(Path(self.input().path))
        return {"catalogue": luigi.LocalTarget(demo.catalogue),
                "plays": luigi.LocalTarget(demo.plays),
                "heldout_plays": luigi.LocalTarget(demo.heldout_plays)}


class RunTask(luigi.Task):
    """A task of one pipeline run; its outputs live under DATA_ROOT/runs/<run_id>/."""
    run_id = RunIdParameter(default="backfill")

    def run_path(self, name: str) -> Path:
        return root().output(self.run_id, f"{name}-{fingerprint(self, self.data_inputs())}")

    def data_inputs(self) -> list | None:
        """The inputs the output is computed from (None: all of them)."""
        return None

    def adopt_twin(self) -> bool:
        """Take the same output from another run, when one computed it (same name, so
        same fingerprint): hard links, written atomically; the other run's retention
        then removes only its own links. Whether there was one."""
        out = Path(self.output().path)
        if out.exists():  # its inputs, known only now, are ones an earlier run used
            return True
        twins = sorted((path for path in root().path.glob(f"runs/*/{out.name}")
                        if path.parent.name != self.run_id), key=lambda path: path.stat().st_mtime)
        if not twins:
            return False
        twin = twins[-1]
        logger.info("%s: the same output exists in run %s; linking it", self, twin.parent.name)
        if twin.is_dir():
            with storage.atomic_dir(out) as tmp:
                shutil.copytree(twin, tmp, copy_function=os.link, dirs_exist_ok=True)
        else:
            with storage.atomic_file(out) as tmp:
                os.link(twin, tmp)
        return True


class Preflight(RunTask, JobTask):
    """`python -m jobs.doctor` on this run's inputs: the environment and the inputs'
    columns, checked in seconds before any expensive stage starts.

    Its report is keyed by the inputs' content and the installed packages' versions,
    so it runs again when any of them changes.
    """

    def requires(self):
        return Inputs()

    def output(self):
        return luigi.LocalTarget(self.run_path("preflight").with_suffix(".json"))

    def run_path(self, name: str) -> Path:
        digest = hashlib.sha1(json.dumps([installed_versions(), fingerprint(self)]).encode())
        return root().output(self.run_id, f"{name}-{digest.hexdigest()[:10]}")

    def program_args(self):
        als = TrainAls(run_id=self.run_id)
        # The doctor reads the plays as ALS will, but has nothing to quarantine.
        return [sys.executable, "-m", "jobs.doctor",
                "--catalogue", self.input()["catalogue"].path,
                "--plays", self.input()["plays"].path,
                *flags(als, PlaysReading, skip=("max_bad_fraction",)),
                "--report", self.output().path]


class TrainAls(Als, AlsSpeed, PlaysReading, Split, SemiCold, RunTask, ChildProcess,
               SparkSubmitTask):
    """Implicit ALS on the warm plays, by spark-submit of jobs/als.py."""
    checkpoint_dir = luigi.OptionalParameter(
        default=None, significant=False,
        description="Spark checkpoint directory every executor reaches (hdfs://...); "
                    "default: inside the output being written")
    app = str(REPO / "jobs" / "als.py")
    name = "coldstart-als"
    tracking_url_pattern = None  # its URL tracker needs captured output; we stream it

    def run(self):
        if not self.adopt_twin():  # the same plays, catalogue and settings: no need to refit
            super().run()

    @property
    def spark_submit(self):
        local = BIN / "spark-submit"
        return str(local) if local.exists() else super().spark_submit

    def requires(self):
        return {"inputs": Inputs(), "preflight": Preflight(run_id=self.run_id)}

    def data_inputs(self):
        # The factors depend on the plays alone (the catalogue is checked against them
        # by the preflight and applied by scoring), so a night that only brings new
        # tracks reuses the last night's ALS output. A hold-out is stratified by the
        # catalogue's artists.
        inputs = self.input()["inputs"]
        return [inputs["plays"]] + ([inputs["catalogue"]] if self.holdout else [])

    def output(self):
        return luigi.LocalTarget(self.run_path("als-heldout" if self.holdout else "als"))

    def app_options(self):
        catalogue = ["--catalogue", self.input()["inputs"]["catalogue"].path] \
            if self.holdout else []
        return ["--plays", self.input()["inputs"]["plays"].path, "--out", self.output().path,
                *catalogue, *flags(self, Als, AlsSpeed, PlaysReading, Split, SemiCold),
                *(["--checkpoint-dir", self.checkpoint_dir] if self.checkpoint_dir else [])]


class MelSpectrograms(Mels, MelJob, RunTask, JobTask):
    """Log-mel excerpts of every catalogue track not done before, by the Beam job."""

    def params(self) -> MelParams:
        return config_of(self, Mels)

    def params_dir(self) -> Path:
        """Every run's spectrograms made with these parameters (what training reads)."""
        return layout.params_dir(root().mels, self.params())

    def requires(self):
        return {"inputs": Inputs(), "preflight": Preflight(run_id=self.run_id)}

    def output(self):
        return luigi.LocalTarget(layout.run_dir(root().mels, self.params(), self.run_id))

    def program_args(self):
        return [sys.executable, "-m", "jobs.spectrograms",
                "--catalogue", self.input()["inputs"]["catalogue"].path, "--out", root().mels,
                "--run-id", self.run_id, *flags(self, Mels, MelJob)]


class TrainModel(Network, Training, Split, RunTask, JobTask):
    """Train the audio CNN on warm tracks under torchrun (DDP); ``holdout`` and
    ``holdout_seed`` pick the factors it learns (see TrainAls)."""
    net = luigi.DictParameter(
        default={}, description="network sizes per architecture, e.g. {\"dieleman2014\": "
        "{\"channels\": [64, 64, 128, 128], \"dense\": 256}}; what is not given takes the "
        "seeds' sizes (keys: channels, pools, dense, dropout, window_frames)")
    nproc = luigi.IntParameter(default=2, significant=False,
                               description="processes (GPUs) on this node")
    max_restarts = luigi.IntParameter(default=3, significant=False,
                                      description="torchrun restarts after a lost worker")
    metadata = luigi.BoolParameter(default=False,
                                   description="late fusion: the catalogue's artist, genre and "
                                               "tags feed a metadata branch beside the audio")

    @classmethod
    def of_spec(cls, spec: str, **params) -> "TrainModel":
        """The model a spec names: ``architecture:loss``, or ``architecture:loss:meta``
        for one with a metadata branch."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[2:] not in ([], ["meta"]):
            raise ValueError(f"model {spec!r}: write architecture:loss or "
                             "architecture:loss:meta (e.g. dieleman2014:wpe:meta)")
        return cls(arch=parts[0], loss=parts[1], metadata=len(parts) == 3, **params)

    def requires(self):
        return {"inputs": Inputs(), "mels": MelSpectrograms(run_id=self.run_id),
                "als": TrainAls(run_id=self.run_id, holdout=self.holdout,
                                holdout_seed=self.holdout_seed)}

    def data_inputs(self):
        # The catalogue only for its metadata: the warm tracks come from ALS (the wpe
        # loss reads the plays).
        inputs = self.input()["inputs"]
        return [self.input()["als"], self.input()["mels"], inputs["plays"]] \
            + ([inputs["catalogue"]] if self.metadata else [])

    def output(self):
        name = (f"model-{'heldout-' if self.holdout else ''}{self.arch}-{self.loss}"
                f"{'-meta' if self.metadata else ''}")
        return luigi.LocalTarget(self.run_path(name).with_suffix(".pt"))

    def run(self):
        if self.adopt_twin():  # trained on the same factors with the same settings
            return
        # A missing or empty input fails every attempt alike: check it once, alone,
        # before torchrun would restart workers that cannot succeed.
        check = self.train_args() + ["--check"]
        logger.info("checking the training inputs: %s", " ".join(map(str, check)))
        if subprocess.run([sys.executable, "-m", *map(str, check)], env=job_environment(),
                          check=False).returncode != 0:
            raise JobFailed("model.train --check failed; its log above says why")
        super().run()

    def program_args(self):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={self.nproc}", f"--max-restarts={self.max_restarts}",
                "-m", *self.train_args()]

    def train_args(self) -> list:
        """``model.train`` and its arguments."""
        out = Path(self.output().path)
        snapshot, tensorboard = layout.model_companions(out)
        als = Path(self.input()["als"].path)
        shape = []
        for key, value in self.net.get(self.arch, {}).items():
            shape += [f"--{key.replace('_', '-')}", *(value if isinstance(value, (list, tuple)) else [value])]
        return ["model.train", "--mels", self.requires()["mels"].params_dir(),
                "--item-factors", als / layout.ITEM_FACTORS,
                "--user-factors", als / layout.USER_FACTORS,
                "--plays", self.input()["inputs"]["plays"].path,
                "--out", out, "--snapshot", snapshot, "--tensorboard", tensorboard,
                *flags(self, Network, Training), *shape,
                *(["--catalogue", self.input()["inputs"]["catalogue"].path] if self.metadata
                  else [])]


class ChooseModel(Candidates, Baseline, RunTask, JobTask):
    """The predictor to ship: the best on validation among the trained CNNs
    (``candidates``, architecture:loss[:meta]) and the bag-of-words baseline, by
    `python -m jobs.evaluate.choose`; its model file says which and why."""

    def requires(self):
        models = [TrainModel.of_spec(c, run_id=self.run_id) for c in self.candidates]
        return {"inputs": Inputs(), "als": TrainAls(run_id=self.run_id),
                "mels": MelSpectrograms(run_id=self.run_id), "models": models}

    def data_inputs(self):
        return [self.input()["als"], self.input()["mels"], self.input()["models"],
                self.input()["inputs"]["plays"]] \
            + ([self.input()["inputs"]["catalogue"]] if self.fused() else [])

    def fused(self) -> bool:
        return any(model.metadata for model in self.requires()["models"])

    def output(self):
        return luigi.LocalTarget(self.run_path("model-chosen").with_suffix(".pt"))

    def run(self):
        if not self.adopt_twin():  # the same candidates, factors and plays: the same choice
            super().run()

    def program_args(self):
        als = Path(self.input()["als"].path)
        models = [arg for target in self.input()["models"] for arg in ("--candidate", target.path)]
        return [sys.executable, "-m", "jobs.evaluate.choose", "--mels", self.requires()["mels"].params_dir(),
                "--item-factors", als / layout.ITEM_FACTORS,
                "--user-factors", als / layout.USER_FACTORS,
                "--plays", self.input()["inputs"]["plays"].path, *models,
                # training's own setting: a model it would keep is never refused here
                "--min-spread", TrainModel(run_id=self.run_id).min_spread,
                *flags(self, Baseline), "--out", self.output().path,
                *(["--catalogue", self.input()["inputs"]["catalogue"].path] if self.fused()
                  else [])]


class ScoreColdTracks(Blend, RunTask, JobTask):
    """Predicted factors for every cold track, and the combined factor table."""

    def requires(self):
        return {"inputs": Inputs(), "als": TrainAls(run_id=self.run_id),
                "mels": MelSpectrograms(run_id=self.run_id), "model": ChooseModel(run_id=self.run_id)}

    def output(self):
        return luigi.LocalTarget(self.run_path("factors"))

    def program_args(self):
        return [sys.executable, "-m", "jobs.score", "--model", self.input()["model"].path,
                "--mels", self.requires()["mels"].params_dir(),
                "--catalogue", self.input()["inputs"]["catalogue"].path,
                "--item-factors", Path(self.input()["als"].path) / layout.ITEM_FACTORS,
                "--als", self.input()["als"].path, *flags(self, Blend),
                "--out", self.output().path]


class EvaluateColdStart(Evaluation, EvaluationSplit, Baseline, RunTask, JobTask):
    """The paper's evaluation on any catalogue and plays: a stratified share of the
    warm tracks is held out, ALS and every model are trained without their plays, and
    random factors, the bag-of-words baselines, each CNN, the artist oracle and the
    upper bound are compared on them. The production chain still uses every play.

        luigi --module workflows EvaluateColdStart --local-scheduler

    The semi-cold blend it reports is the one scoring serves ([ScoreColdTracks]).
    """

    def requires(self):
        split = dict(run_id=self.run_id, holdout=self.holdout, holdout_seed=self.seed)
        models = [TrainModel.of_spec(m, **split) for m in self.models]
        return {"inputs": Inputs(), "als": TrainAls(**split),
                "mels": MelSpectrograms(run_id=self.run_id), "models": models}

    def output(self):
        return luigi.LocalTarget(self.run_path("evaluation").with_suffix(".json"))

    def program_args(self):
        als = Path(self.input()["als"].path)
        models = [arg for target in self.input()["models"] for arg in ("--model", target.path)]
        return [sys.executable, "-m", "jobs.evaluate",
                "--user-factors", als / layout.USER_FACTORS,
                "--item-factors", als / layout.ITEM_FACTORS,
                "--heldout-plays", als / layout.HELDOUT_PLAYS,
                "--catalogue", self.input()["inputs"]["catalogue"].path,
                "--mels", self.requires()["mels"].params_dir(), *models,
                *flags(self, Baseline), "--seed", self.seed,
                *flags(ScoreColdTracks(run_id=self.run_id), Blend), "--out", self.output().path]


class NewReleaseAudience(Audience, RunTask, JobTask):
    """For every cold track, the users most likely to like it (jobs/audience.py)."""

    def requires(self):
        return {"als": TrainAls(run_id=self.run_id), "factors": ScoreColdTracks(run_id=self.run_id)}

    def output(self):
        return luigi.LocalTarget(self.run_path("audience").with_suffix(".parquet"))

    def program_args(self):
        return [sys.executable, "-m", "jobs.audience",
                "--user-factors", Path(self.input()["als"].path) / layout.USER_FACTORS,
                "--track-factors", Path(self.input()["factors"].path) / layout.TRACK_FACTORS,
                *flags(self, Audience), "--out", self.output().path]


class SimilarityIndex(RunTask, JobTask):
    """An approximate nearest-neighbour index over every track's factors (jobs/index.py)."""

    def requires(self):
        return ScoreColdTracks(run_id=self.run_id)

    def output(self):
        return luigi.LocalTarget(self.run_path(layout.INDEX))

    def program_args(self):
        return [sys.executable, "-m", "jobs.index",
                "--track-factors", Path(self.input().path) / layout.TRACK_FACTORS,
                "--out", self.output().path]


class PublishFactors(Publishing, RunTask, JobTask):
    """The run's user and track factors as one snapshot behind DATA_ROOT/published/latest;
    snapshots (and runs) beyond the newest ``keep`` are removed."""
    # Luigi runs a task's dependencies at its priority: the night's product is
    # published before the evaluation, which only reports on it, starts.
    priority = 10

    def requires(self):
        return {"inputs": Inputs(), "als": TrainAls(run_id=self.run_id),
                "factors": ScoreColdTracks(run_id=self.run_id),
                "audience": NewReleaseAudience(run_id=self.run_id),
                "index": SimilarityIndex(run_id=self.run_id)}

    def output(self):
        return luigi.LocalTarget(layout.snapshot_dir(root().published, self.run_id))

    def program_args(self):
        inputs = self.input()["inputs"]
        return [sys.executable, "-m", "jobs.publish", "--run-id", self.run_id,
                "--user-factors", Path(self.input()["als"].path) / layout.USER_FACTORS,
                "--track-factors", Path(self.input()["factors"].path) / layout.TRACK_FACTORS,
                "--catalogue", inputs["catalogue"].path, "--plays", inputs["plays"].path,
                "--audience", self.input()["audience"].path, "--index", self.input()["index"].path,
                "--out", root().published, "--runs", root().run(self.run_id).parent,
                *flags(self, Publishing)]


class RunReport(RunTask, JobTask):
    """The run's report (jobs/report): runs/<run id>/report-<fp>/index.html and
    report.md, made last; its job prints the run's one-screen summary and the report's
    path. Its name changes with anything upstream, so a rerun reports afresh."""
    priority = -10  # after everything it reports on

    def requires(self):
        tasks = {"inputs": Inputs(), "publish": PublishFactors(run_id=self.run_id)}
        if Inputs().uses_demo():
            tasks["evaluation"] = EvaluateColdStart(run_id=self.run_id)
        return tasks

    def output(self):
        return luigi.LocalTarget(self.run_path(layout.REPORT))

    def program_args(self):
        inputs = self.input()["inputs"]
        labels = []
        if Inputs().uses_demo():  # the demo's styles, which its listeners' tastes follow
            labels = ["--labels", f"{root().demo.truth}:style"]
        return [sys.executable, "-m", "jobs.report", "--run", root().run(self.run_id),
                "--catalogue", inputs["catalogue"].path, "--plays", inputs["plays"].path, *labels,
                "--out", self.output().path]


class BackfillFactors(luigi.WrapperTask):
    """Factors for every cold track of the catalogue (and, on demo data, their
    evaluation), and the run's report."""
    run_id = RunIdParameter(default="backfill")

    def requires(self):
        yield RunReport(run_id=self.run_id)


class NightlyFactors(luigi.WrapperTask):
    """The scheduled run: everything for one date, under DATA_ROOT/runs/<date>/."""
    date = luigi.DateParameter()

    def requires(self):
        return BackfillFactors(run_id=self.date.isoformat())
