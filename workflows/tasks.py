"""Luigi tasks, one per output: inputs -> ALS -> spectrograms -> training -> scoring.

Each task runs a standalone job as a separate process (spark-submit, the Beam
job, torchrun, the scoring job), so every stage stays runnable by hand. Jobs write
their outputs atomically, so an output that exists is complete.

Task parameters are derived from the dataclasses of schemas/config.py
(workflows/settings.py), overridden by luigi.cfg sections named after the task
([TrainAls] rank = 50, ...), and passed to the jobs as the flags the jobs derive from
the same fields. Output names carry a fingerprint of what they depend on
(workflows/fingerprints.py).
"""
from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import luigi
from luigi.contrib.spark import SparkSubmitTask

from schemas import layout, storage
from schemas.config import (HEADS, NO_HOLDOUT, PRETRAINED_ARCH, AlsParams, AlsTuning,
                            BowConfig, ChooseConfig, DemoConfig, EvaluateConfig, FoldInConfig,
                            HeadConfig, InputOptions, MelParams, NetworkChoice, PublishConfig,
                            QueryConfig,
                            SemiColdConfig, SpectrogramOptions, TagsConfig, TrackHoldout,
                            TrainConfig)
from workflows.fingerprints import fingerprint, with_installed_versions
from workflows.locations import configured_inputs, root, user_inputs
from workflows.parameters import RunIdParameter
from workflows.process import BIN, ChildProcess, JobFailed, JobTask, MayFail, job_environment
from workflows.settings import config_of, flags, settings
from workflows.twins import adopt_twin

REPO = Path(__file__).resolve().parent.parent
# luigi's own logger: `luigi --module workflows` shows what it logs.
logger = logging.getLogger("luigi-interface")


# The settings each task takes, as parameters derived from schemas/config.py.
Demo = settings(DemoConfig)
# Checkpoints only keep Spark's lineage short; the workflow never offered the interval,
# and a new significant parameter would give every ALS output a new fingerprint.
Als = settings(AlsParams, skip=("checkpoint_interval",))
AlsSpeed = settings(AlsTuning)
PlaysReading = settings(InputOptions)
Split = settings(NO_HOLDOUT)
SemiCold = settings(SemiColdConfig, only=("max_listeners",))
Refits = settings(FoldInConfig)
Mels = settings(MelParams)
# [MelSpectrograms] workers is what luigi.cfg files call the job's --decoders.
MelJob = settings(SpectrogramOptions, names={"decoders": "workers"})
Network = settings(NetworkChoice)
# As for ALS: the settings training took from its own defaults stay out, so that the
# models already trained keep their fingerprints.
Training = settings(TrainConfig, skip=("weight_decay", "val_fraction", "taste_tracks", "taste_c"))
Audience = settings(QueryConfig, only=("audience", "user_batch"))
Publishing = settings(PublishConfig)
Tagging = settings(TagsConfig)
Head = settings(HeadConfig, skip=("head",))
# the settings of training the head shares with the networks (model/head.py)
HeadTraining = settings(TrainConfig, only=("seed", "taste_bags"))
Candidates = settings(ChooseConfig, only=("candidates",))
Choosing = settings(ChooseConfig, only=("margin", "combine"))
Baseline = settings(BowConfig, only=("codebook",))
# What scoring serves a semi-cold track; the evaluation reports the same blend.
Blend = settings(SemiColdConfig, only=("min_listeners", "reg"))
Evaluation = settings(EvaluateConfig, only=("models", "seed"))
EvaluationSplit = settings(TrackHoldout, only=("fraction",))


class beam(luigi.Config):
    """Beam options of the jobs that are Beam pipelines (spectrograms, scoring, the
    audience, the index), as on their command lines: for example
    ``options = --runner=FlinkRunner --flink_master=flink:8081``. Empty (the default):
    each job on Beam's local runner, as its --help describes."""
    options = luigi.Parameter(default="", description="Beam pipeline options")


def beam_options() -> list[str]:
    return shlex.split(beam().options)


class DemoCatalogue(Demo, JobTask):
    """Synthesise the built-in demo catalogue (audio, catalogue, plays, held-out plays)."""

    def output(self):
        return luigi.LocalTarget(root().demo.root)

    def program_args(self):
        return [sys.executable, "-m", "jobs.demo_catalogue", "--out", self.output().path,
                *flags(self, Demo)]


class UserInputs(luigi.ExternalTask):
    """A catalogue and play counts the user supplied; nothing makes them, so a missing
    one is missing data (luigi's exit code for it), named by :meth:`missing`."""

    def output(self):
        catalogue, plays = user_inputs()
        return {"catalogue": luigi.LocalTarget(catalogue), "plays": luigi.LocalTarget(plays)}

    def missing(self) -> str:
        """What is missing, and where it was to come from (workflows/console.py says it)."""
        where = "[paths] in luigi.cfg" if configured_inputs() else f"the data root {root().path}"
        missing = [f"{name} {target.path}" for name, target in self.output().items()
                   if not target.exists()]
        return f"{' and '.join(missing)} not found (from {where})"


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

    def run_outputs(self) -> layout.RunOutputs:
        """Where this run's outputs live, by name (schemas/layout.py)."""
        return root().outputs(self.run_id)

    def fingerprint(self) -> str:
        """What the output depends on, the user's catalogue and plays by content."""
        return fingerprint(self, Inputs().output(), self.data_inputs())

    def data_inputs(self) -> list | None:
        """The inputs the output is computed from (None: all of them)."""
        return None


class Preflight(RunTask, JobTask):
    """`python -m jobs.doctor` on this run's inputs: the environment and the inputs'
    columns, checked in seconds before any expensive stage starts.

    Its report is keyed by the inputs' content and the installed packages' versions,
    so it runs again when any of them changes.
    """

    def requires(self):
        return Inputs()

    def output(self):
        return luigi.LocalTarget(
            self.run_outputs().preflight(with_installed_versions(self.fingerprint())))

    def program_args(self):
        als = TrainAls(run_id=self.run_id)
        # The doctor reads the plays as ALS will, but has nothing to quarantine.
        return [sys.executable, "-m", "jobs.doctor",
                "--catalogue", self.input()["catalogue"].path,
                "--plays", self.input()["plays"].path,
                *flags(als, PlaysReading, skip=("max_bad_fraction",)),
                "--report", self.output().path]


class TrainAls(Als, AlsSpeed, PlaysReading, Split, SemiCold, Refits, RunTask, ChildProcess,
               SparkSubmitTask):
    """Implicit ALS on the warm plays, by spark-submit of jobs/als/job.py: a full refit
    every ``refit_every`` nights (or earlier, when the job finds more than
    ``max_new_share`` of the plays new), and between refits a fold-in of the night's
    plays into the last refit's factor space (``base``)."""
    checkpoint_dir = luigi.OptionalParameter(
        default=None, significant=False,
        description="Spark checkpoint directory every executor reaches (hdfs://...); "
                    "default: inside the output being written")
    app = str(REPO / "jobs" / "als" / "job.py")
    name = "coldstart-als"
    tracking_url_pattern = None  # its URL tracker needs captured output; we stream it

    def run(self):
        if not adopt_twin(self):  # the same plays, catalogue and settings: no need to refit
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
        # catalogue's artists. A fold-in depends on its refit too.
        inputs = self.input()["inputs"]
        base = self.base()
        return [inputs["plays"]] + ([inputs["catalogue"]] if self.holdout else []) \
            + ([luigi.LocalTarget(base)] if base else [])

    def output(self):
        return luigi.LocalTarget(
            self.run_outputs().als(self.fingerprint(), heldout=bool(self.holdout)))

    def base(self) -> Path | None:
        """The refit tonight folds into: the newest full refit another run made with
        these settings, while fewer than ``refit_every`` nights have used it (its own,
        its twins' and the fold-ins'); None: a full refit tonight."""
        if self.holdout or self.refit_every <= 1:
            return None
        learned = {path: storage.read_params(path / layout.ITEM_FACTORS)
                   for path in root().every_als() if path.parent.name != self.run_id}
        ours = {name: getattr(self, name) for name in ("rank", "reg", "alpha", "eps")}
        refits = [path for path, meta in learned.items()
                  if meta.get("night", "refit") == "refit" and (path / layout.USER_DIGESTS).exists()
                  and all(meta.get(name) == value for name, value in ours.items())]
        if not refits:
            return None
        newest = max(refits, key=lambda path: path.stat().st_mtime)
        refit_tonight = self.run_outputs().als(
            fingerprint(self, Inputs().output(), [self.input()["inputs"]["plays"]]))
        if refit_tonight.name == newest.name:  # the refit's own plays: it is tonight's output
            return None
        nights = {path.parent.name for path, meta in learned.items()
                  if path.name == newest.name or meta.get("base") == newest.name}
        return newest if len(nights) < self.refit_every else None

    def space(self) -> luigi.LocalTarget:
        """The refit whose factor space tonight's factors are in: this output, or the
        refit it folds into. Models learn a space, so they are named after it, not
        after the night's plays, and a fold-in night keeps them."""
        out = Path(self.output().path)
        if out.exists():
            meta = storage.read_params(out / layout.ITEM_FACTORS)
            if meta.get("night") != "fold-in":
                return self.output()
            found = [path for path in root().outputs_named(meta["base"])
                     if path.parent.name != self.run_id]
            return luigi.LocalTarget(found[0] if found else root().runs / meta["base"])
        base = self.base()
        return luigi.LocalTarget(base) if base else self.output()

    def app_options(self):
        catalogue = ["--catalogue", self.input()["inputs"]["catalogue"].path] \
            if self.holdout else []
        base = self.base()
        return ["--plays", self.input()["inputs"]["plays"].path, "--out", self.output().path,
                *catalogue, *flags(self, Als, AlsSpeed, PlaysReading, Split, SemiCold),
                *(["--base", str(base), *flags(self, Refits, skip=("refit_every",))] if base else []),
                *(["--checkpoint-dir", self.checkpoint_dir] if self.checkpoint_dir else [])]


class MelSpectrograms(Mels, MelJob, RunTask, JobTask):
    """Log-mel excerpts of every catalogue track not done before and, with ``frontend``,
    the pretrained tagger's input made from the same decoding, by the Beam job."""

    def params(self) -> MelParams:
        return config_of(self, Mels)

    def params_dir(self) -> Path:
        """Every run's spectrograms made with these parameters (what training reads)."""
        return layout.params_dir(root().mels, self.params())

    def frontend_dir(self) -> Path:
        """Every run's inputs of the pretrained tagger made with these spectrograms
        (MelParams.frontend), while ``frontend`` is on."""
        return layout.params_dir(root().mels, self.params().frontend())

    def requires(self):
        return {"inputs": Inputs(), "preflight": Preflight(run_id=self.run_id)}

    def output(self):
        # The spectrograms: what the tasks downstream read, and name in their fingerprints.
        return luigi.LocalTarget(layout.run_dir(root().mels, self.params(), self.run_id))

    def frontend_output(self) -> luigi.LocalTarget:
        """This run's inputs of the pretrained tagger."""
        return luigi.LocalTarget(layout.run_dir(root().mels, self.params().frontend(),
                                                self.run_id))

    def complete(self) -> bool:
        """Both outputs are there: a run made without the tagger's input is run again,
        and the job then makes only that (a track decoded once for it)."""
        return super().complete() and (not self.frontend or self.frontend_output().exists())

    def program_args(self):
        return [sys.executable, "-m", "jobs.spectrograms",
                "--catalogue", self.input()["inputs"]["catalogue"].path, "--out", root().mels,
                "--run-id", self.run_id, *flags(self, Mels, MelJob), *beam_options()]


class TrainModel(MayFail, Network, Training, Split, RunTask, JobTask):
    """Train the audio CNN on warm tracks under torchrun (DDP); ``holdout`` and
    ``holdout_seed`` pick the factors it learns (see TrainAls). A model that cannot be
    trained (bad input, a collapse) fails this run's model alone (MayFail)."""
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
    from_scratch = luigi.BoolParameter(
        default=False, significant=False,
        description="train the network from scratch, not from the last model of its kind")

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
        # What it learns is the factor space (the refit's plays are in its name), so a
        # fold-in night keeps the model; the catalogue only for its metadata.
        return [self.requires()["als"].space(), self.input()["mels"]] \
            + ([self.input()["inputs"]["catalogue"]] if self.metadata else [])

    def output(self):
        return luigi.LocalTarget(self.run_outputs().model(
            self.fingerprint(), self.arch, self.loss, metadata=self.metadata,
            heldout=bool(self.holdout)))

    def run(self):
        with self.survived():
            if adopt_twin(self):  # trained on the same factors with the same settings
                return
            # A missing or empty input fails every attempt alike: check it once, alone,
            # before torchrun would restart workers that cannot succeed.
            check = self.train_args() + ["--check"]
            logger.info("checking the training inputs: %s", " ".join(map(str, check)))
            with tempfile.NamedTemporaryFile("r", suffix=".txt") as failure:
                if subprocess.run([sys.executable, "-m", *map(str, check)],
                                  env=job_environment(Path(failure.name)),
                                  check=False).returncode != 0:
                    why = failure.read().strip() or "--check failed; its log above says why"
                    raise JobFailed(f"{self.task_family}: {why}")
            super().run()

    def program_args(self):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={self.nproc}", f"--max-restarts={self.max_restarts}",
                "-m", *self.train_args()]

    def reads_frontend(self) -> bool:
        """Whether it learns from the taggers' input (fine-tuning musicnn)."""
        return self.arch == PRETRAINED_ARCH

    def mels_dir(self) -> Path:
        mels = self.requires()["mels"]
        return mels.frontend_dir() if self.reads_frontend() else mels.params_dir()

    def last_model(self) -> tuple[Path, Path] | None:
        """(model file, the item factors of the space it learned) of the newest network
        of this kind another run made, to warm-start from; None with ``from_scratch``,
        and for a held-out model, which must not start from one that saw its tracks."""
        if self.from_scratch or self.holdout:
            return None
        name = Path(self.output().path).name
        kind = name[:name.rindex("-")]  # model-<arch>-<loss>[-meta]
        found = [path for path in root().runs.glob(f"*/{kind}-[0-9a-f]*{layout.MODEL_FILE}")
                 if path.parent.name != self.run_id]
        for model in sorted(found, key=lambda path: path.stat().st_mtime, reverse=True):
            # every model of a run learned that run's factor space
            als = layout.RunOutputs(model.parent).newest_als()
            if als is not None:
                return model, als / layout.ITEM_FACTORS
        return None

    def train_args(self) -> list:
        """``model.train`` and its arguments."""
        last = self.last_model()
        out = Path(self.output().path)
        snapshot, tensorboard = layout.model_companions(out)
        als = Path(self.input()["als"].path)
        shape = []
        for key, value in self.net.get(self.arch, {}).items():
            shape += [f"--{key.replace('_', '-')}", *(value if isinstance(value, (list, tuple)) else [value])]
        return ["model.train", "--mels", self.mels_dir(),
                "--item-factors", als / layout.ITEM_FACTORS,
                "--user-factors", als / layout.USER_FACTORS,
                "--plays", self.input()["inputs"]["plays"].path,
                "--out", out, "--snapshot", snapshot, "--tensorboard", tensorboard,
                *flags(self, Network, Training), *shape,
                *(["--init-from", last[0], "--init-factors", last[1]] if last else []),
                *(["--catalogue", self.input()["inputs"]["catalogue"].path] if self.metadata
                  else [])]


class FitHead(MayFail, Head, HeadTraining, Split, RunTask, JobTask):
    """The pretrained front end's head (and taste classifier) fitted on warm tracks, by
    `python -m model.head`: no torchrun, the taggers are frozen."""
    head = luigi.ChoiceParameter(choices=HEADS, default=HeadConfig.head,
                                 description=HeadConfig.__dataclass_fields__["head"]
                                 .metadata["help"])
    metadata = False  # reads no catalogue columns

    def reads_frontend(self) -> bool:
        return True

    def requires(self):
        return {"inputs": Inputs(), "mels": MelSpectrograms(run_id=self.run_id),
                "als": TrainAls(run_id=self.run_id, holdout=self.holdout,
                                holdout_seed=self.holdout_seed)}

    def data_inputs(self):
        return [self.requires()["als"].space(), self.input()["mels"]]  # as TrainModel's

    def output(self):
        return luigi.LocalTarget(self.run_outputs().model(
            self.fingerprint(), PRETRAINED_ARCH, self.head, heldout=bool(self.holdout)))

    def run(self):
        with self.survived():
            if not adopt_twin(self):
                super().run()

    def program_args(self):
        als = Path(self.input()["als"].path)
        mels = self.requires()["mels"]
        return [sys.executable, "-m", "model.head", "--mels", mels.params_dir(),
                "--frontend-mels", mels.frontend_dir(),
                "--item-factors", als / layout.ITEM_FACTORS, "--head", self.head,
                *flags(self, Head, HeadTraining), "--out", self.output().path]


def model_task(spec: str, **params) -> luigi.Task:
    """The task that makes the model a spec names: ``musicnn:<head>`` (ridge, clusters)
    for the frozen taggers with a fitted head (FitHead), else a network's
    ``architecture:loss[:meta]`` (``musicnn:<loss>``: the tagger fine-tuned)."""
    arch, _, rest = spec.partition(":")
    if arch == PRETRAINED_ARCH and rest in HEADS:
        return FitHead(head=rest, **params)
    return TrainModel.of_spec(spec, **params)


def frontend_args(mels: "MelSpectrograms", models: list) -> list:
    """--frontend-mels for a job that judges or runs models, when one reads it."""
    return ["--frontend-mels", mels.frontend_dir()] \
        if any(model.reads_frontend() for model in models) else []


class ChooseModel(MayFail, Candidates, Choosing, Baseline, RunTask, JobTask):
    """The predictor to ship: the best on validation among the trained CNNs
    (``candidates``, architecture:loss[:meta]) and the bag-of-words baseline, by
    `python -m jobs.evaluate.choose`; its model file says which and why. The candidates
    this run could not train are left out; with none left, or none that choosing
    accepts, the night has no model of its own (MayFail: scoring degrades)."""

    def requires(self):
        models = [model_task(c, run_id=self.run_id) for c in self.candidates]
        return {"inputs": Inputs(), "als": TrainAls(run_id=self.run_id),
                "mels": MelSpectrograms(run_id=self.run_id), "models": models}

    def data_inputs(self):
        # as the candidates': a fold-in night keeps the choice
        return [self.requires()["als"].space(), self.input()["mels"], self.input()["models"]] \
            + ([self.input()["inputs"]["catalogue"]] if self.fused() else [])

    def trained(self) -> list:
        """The candidates' tasks that made their model in this run."""
        return [model for model in self.requires()["models"] if model.failure() is None]

    def fused(self) -> bool:
        return any(model.metadata for model in self.trained())

    def output(self):
        return luigi.LocalTarget(self.run_outputs().chosen_model(self.fingerprint()))

    def run(self):
        with self.survived():
            if adopt_twin(self):  # the same candidates, factors and plays: the same choice
                return
            if not self.trained():
                raise JobFailed("no candidate model could be trained: " + "; ".join(
                    model.failure() for model in self.requires()["models"]))
            super().run()

    def program_args(self):
        als = Path(self.input()["als"].path)
        trained = self.trained()
        models = [arg for task in trained for arg in ("--candidate", task.output().path)]
        return [sys.executable, "-m", "jobs.evaluate.choose", "--mels", self.requires()["mels"].params_dir(),
                "--item-factors", als / layout.ITEM_FACTORS,
                "--user-factors", als / layout.USER_FACTORS,
                "--plays", self.input()["inputs"]["plays"].path, *models,
                # training's own setting: a model it would keep is never refused here
                "--min-spread", TrainModel(run_id=self.run_id).min_spread,
                *flags(self, Baseline, Choosing), "--out", self.output().path,
                *frontend_args(self.requires()["mels"], trained),
                *(["--catalogue", self.input()["inputs"]["catalogue"].path] if self.fused()
                  else [])]


def last_served_model() -> tuple[Path, Path] | None:
    """(model file, the item factors of the space it learned) that the latest published
    snapshot served, while both are still there: what a degraded night falls back on."""
    manifest = layout.latest(root().published) / layout.SNAPSHOT_MANIFEST
    try:
        served = json.loads(manifest.read_text()).get("model") or {}
    except (OSError, ValueError):
        return None
    paths = [Path(p) for p in (served.get("file"), served.get("item_factors")) if p]
    return (paths[0], paths[1]) if len(paths) == 2 and all(p.exists() for p in paths) else None


class ScoreColdTracks(Blend, RunTask, JobTask):
    """Predicted factors for every cold track, and the combined factor table. A night
    without a model of its own is degraded: the model the latest snapshot served
    predicts, rotated into tonight's factor space (jobs/score.py), or, with none, the
    cold tracks are set aside."""

    def requires(self):
        return {"inputs": Inputs(), "als": TrainAls(run_id=self.run_id),
                "mels": MelSpectrograms(run_id=self.run_id), "model": ChooseModel(run_id=self.run_id)}

    def data_inputs(self):
        degraded = self.requires()["model"].failure() is not None
        fallback = last_served_model() if degraded else None
        # a degraded night's factors are named apart: a rerun that trains scores afresh
        return [self.input()] \
            + ([luigi.LocalTarget(self.requires()["model"].refusal())] if degraded else []) \
            + ([luigi.LocalTarget(fallback[0])] if fallback else [])

    def output(self):
        return luigi.LocalTarget(self.run_outputs().factors(self.fingerprint()))

    def model_args(self) -> list:
        """The model to score with: the night's own, else the latest snapshot's."""
        mels, choosing = self.requires()["mels"], self.requires()["model"]
        why = choosing.failure()
        if why is None:
            return ["--model", self.input()["model"].path,
                    *frontend_args(mels, choosing.trained())]
        fallback = last_served_model()
        if fallback is None:
            return ["--degraded", f"{why}; no earlier model to fall back on"]
        return ["--degraded", why, "--model", fallback[0], "--learned-factors", fallback[1],
                *(["--frontend-mels", mels.frontend_dir()] if mels.frontend else [])]

    def program_args(self):
        return [sys.executable, "-m", "jobs.score", *self.model_args(),
                "--mels", self.requires()["mels"].params_dir(),
                "--catalogue", self.input()["inputs"]["catalogue"].path,
                "--item-factors", Path(self.input()["als"].path) / layout.ITEM_FACTORS,
                "--als", self.input()["als"].path, *flags(self, Blend),
                "--out", self.output().path, *beam_options()]


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
        models = [model_task(m, **split) for m in self.models]
        return {"inputs": Inputs(), "als": TrainAls(**split),
                "mels": MelSpectrograms(run_id=self.run_id), "models": models}

    def output(self):
        return luigi.LocalTarget(self.run_outputs().evaluation(self.fingerprint()))

    def program_args(self):
        als = Path(self.input()["als"].path)
        # the models this run could not train are left out (their failure is logged)
        trained = {spec: task for spec, task in zip(self.models, self.requires()["models"])
                   if task.failure() is None}
        models = [arg for task in trained.values() for arg in ("--model", task.output().path)]
        choosing = ChooseModel(run_id=self.run_id)
        together = [arg for spec, task in trained.items()
                    if choosing.combine and spec in choosing.candidates
                    for arg in ("--together", task.output().path)]
        return [sys.executable, "-m", "jobs.evaluate",
                "--user-factors", als / layout.USER_FACTORS,
                "--item-factors", als / layout.ITEM_FACTORS,
                "--heldout-plays", als / layout.HELDOUT_PLAYS,
                "--catalogue", self.input()["inputs"]["catalogue"].path,
                "--mels", self.requires()["mels"].params_dir(), *models, *together,
                *frontend_args(self.requires()["mels"], list(trained.values())),
                *flags(self, Baseline), "--seed", self.seed,
                *flags(ScoreColdTracks(run_id=self.run_id), Blend), "--out", self.output().path]


class NewReleaseAudience(Audience, RunTask, JobTask):
    """For every cold track, the users most likely to like it (jobs/audience.py)."""

    def requires(self):
        return {"als": TrainAls(run_id=self.run_id), "factors": ScoreColdTracks(run_id=self.run_id)}

    def output(self):
        return luigi.LocalTarget(self.run_outputs().audience(self.fingerprint()))

    def program_args(self):
        return [sys.executable, "-m", "jobs.audience",
                "--user-factors", Path(self.input()["als"].path) / layout.USER_FACTORS,
                "--track-factors", Path(self.input()["factors"].path) / layout.TRACK_FACTORS,
                *flags(self, Audience), "--out", self.output().path, *beam_options()]


class SimilarityIndex(RunTask, JobTask):
    """An approximate nearest-neighbour index over every track's factors (jobs/index.py)."""

    def requires(self):
        return ScoreColdTracks(run_id=self.run_id)

    def output(self):
        return luigi.LocalTarget(self.run_outputs().index(self.fingerprint()))

    def program_args(self):
        return [sys.executable, "-m", "jobs.index",
                "--track-factors", Path(self.input().path) / layout.TRACK_FACTORS,
                "--out", self.output().path, *beam_options()]


class TagTracks(Tagging, RunTask, JobTask):
    """Every catalogue track's top tags from the pretrained taggers (jobs/tags.py), read
    from the tagger-input spectrograms. Not taken from a twin run: a night with the same
    catalogue may have heard more tracks (one whose audio failed before), and tagging
    again only reads what the taggers heard, kept beside each shard."""

    def requires(self):
        return {"inputs": Inputs(), "mels": MelSpectrograms(run_id=self.run_id)}

    def data_inputs(self):
        return [self.input()["inputs"]["catalogue"], self.input()["mels"]]

    def output(self):
        return luigi.LocalTarget(self.run_outputs().tags(self.fingerprint()))

    def program_args(self):
        return [sys.executable, "-m", "jobs.tags",
                "--frontend-mels", self.requires()["mels"].frontend_dir(),
                "--catalogue", self.input()["inputs"]["catalogue"].path,
                *flags(self, Tagging), "--out", self.output().path]


class PublishFactors(Publishing, RunTask, JobTask):
    """The run's user and track factors, with every track's tags, as one snapshot behind
    DATA_ROOT/published/latest; snapshots (and runs) beyond the newest ``keep`` are
    removed."""
    # Luigi runs a task's dependencies at its priority: the night's product is
    # published before the evaluation, which only reports on it, starts.
    priority = 10

    def requires(self):
        return {"inputs": Inputs(), "als": TrainAls(run_id=self.run_id),
                "factors": ScoreColdTracks(run_id=self.run_id),
                "audience": NewReleaseAudience(run_id=self.run_id),
                "index": SimilarityIndex(run_id=self.run_id), "tags": TagTracks(run_id=self.run_id)}

    def output(self):
        return luigi.LocalTarget(layout.snapshot_dir(root().published, self.run_id))

    def program_args(self):
        inputs = self.input()["inputs"]
        return [sys.executable, "-m", "jobs.publish", "--run-id", self.run_id,
                "--user-factors", Path(self.input()["als"].path) / layout.USER_FACTORS,
                "--track-factors", Path(self.input()["factors"].path) / layout.TRACK_FACTORS,
                "--catalogue", inputs["catalogue"].path, "--plays", inputs["plays"].path,
                "--audience", self.input()["audience"].path, "--index", self.input()["index"].path,
                "--tags", self.input()["tags"].path,
                "--out", root().published, "--runs", root().runs,
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
        return luigi.LocalTarget(self.run_outputs().report(self.fingerprint()))

    def program_args(self):
        inputs = self.input()["inputs"]
        labels = []
        if Inputs().uses_demo():  # the demo's styles and tempos, which its listeners' tastes follow
            labels = ["--labels", f"{root().demo.truth}:style", "--labels", f"{root().demo.truth}:tempo"]
        return [sys.executable, "-m", "jobs.report", "--run", root().run(self.run_id),
                "--catalogue", inputs["catalogue"].path, "--plays", inputs["plays"].path, *labels,
                "--out", self.output().path]


class NightDegraded(RuntimeError):
    """The run published, but without a model of its own."""


class NightVerdict(RunTask):
    """Last: fails, once the degraded snapshot and its report are out, when the run had
    no model of its own, so that cron and systemd alert; its one line says why."""
    priority = -20

    def requires(self):
        return RunReport(run_id=self.run_id)

    def degraded(self) -> str | None:
        manifest = layout.snapshot_dir(root().published, self.run_id) / layout.SNAPSHOT_MANIFEST
        return json.loads(manifest.read_text()).get("degraded")

    def complete(self):
        return self.requires().complete() and not self.degraded()

    def run(self):
        why = self.degraded()
        if why:
            raise NightDegraded(f"run {self.run_id} published degraded: {why}")


class BackfillFactors(luigi.WrapperTask):
    """Factors for every cold track of the catalogue (and, on demo data, their
    evaluation), and the run's report; the run fails after publishing when it was
    degraded (NightVerdict)."""
    run_id = RunIdParameter(default="backfill")

    def requires(self):
        yield NightVerdict(run_id=self.run_id)


class NightlyFactors(luigi.WrapperTask):
    """The scheduled run: everything for one date, under DATA_ROOT/runs/<date>/."""
    date = luigi.DateParameter()

    def requires(self):
        return BackfillFactors(run_id=self.date.isoformat())
