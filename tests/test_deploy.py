"""deploy/ as far as it can be checked offline: each file parses, runs the production
settings, makes a failed night visible, and names only what exists."""
import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import luigi
import yaml

import workflows

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
INSTALL = Path("/srv/coldstart")  # where the units and the crontab expect the checkout


def in_repo(path: str) -> Path:
    """A path of the installed checkout, as a path of this repository."""
    return REPO / Path(path).relative_to(INSTALL)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string((DEPLOY / name).read_text())
    return parser


def night_command(command: str) -> list[str]:
    """The words of ``command`` from `-m workflows` (python -m workflows, the night's
    own exit codes) on, as `--module workflows ...`: what luigi's command line takes."""
    words = shlex.split(command.replace("\\%", "%").replace("%%", "%"))
    start = words.index("-m")
    assert words[start - 1].endswith("python") and words[start + 1] == "workflows", words
    return ["--module", *words[start + 1:]]


def assert_runs_nightly(command: str) -> None:
    """``command`` runs this package's NightlyFactors with a date, a task that exists."""
    words = night_command(command)
    task = words[2]
    assert task == "NightlyFactors" and isinstance(getattr(workflows, task), luigi.task_register.Register)
    assert "--date" in words


def test_the_luigi_overrides_parse_and_name_real_tasks():
    config = configparser.ConfigParser(interpolation=None)
    config.read_string((DEPLOY / "luigi.cfg").read_text())
    for section in config.sections():
        if section[0].isupper():
            task = getattr(workflows, section)
            for option in config[section]:
                assert option in task.get_param_names(include_significant=True), (section, option)
    assert config["TrainAls"]["checkpoint_dir"].startswith("hdfs://")
    assert in_repo(config["spark"]["properties-file"]).exists()


def test_the_crontab_runs_production_settings_and_reports_failure():
    lines = [line for line in (DEPLOY / "crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    settings = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    assert in_repo(settings["LUIGI_CONFIG_PATH"]) == DEPLOY / "luigi.cfg"
    assert "@" in settings["MAILTO"]
    [entry] = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    minute, hour, day, month, weekday, command = entry.split(None, 5)
    assert all(re.fullmatch(r"[\d*/,-]+", field) for field in (minute, hour, day, month, weekday))
    assert_runs_nightly(command.split("&&", 1)[1].split(">>")[0])
    assert "|| echo" in command, "a failed night must print something for cron to mail"


def test_the_systemd_units_run_production_settings_and_alert_on_failure():
    service, timer, alert = (unit("coldstart-nightly.service"), unit("coldstart-nightly.timer"),
                             unit("coldstart-alert@.service"))
    assert service["Unit"]["OnFailure"] == "coldstart-alert@%n.service"
    environment = dict(value.split("=", 1) for value in
                       service["Service"]["Environment"].split("\n"))
    assert in_repo(environment["LUIGI_CONFIG_PATH"]) == DEPLOY / "luigi.cfg"
    assert_runs_nightly(shlex.split(service["Service"]["ExecStart"])[2].replace("%%", "%"))
    assert timer["Timer"]["Unit"] == "coldstart-nightly.service" and timer["Timer"]["OnCalendar"]
    assert "ExecStart" in alert["Service"]
    luigid = unit("luigid.service")["Service"]
    words = luigid["ExecStart"].split()
    assert words[words.index("--address") + 1] == "127.0.0.1"
    # luigid does not start without its log directory: systemd makes it.
    assert words[words.index("--logdir") + 1] == f"/var/log/{luigid['LogsDirectory']}"


def test_the_kubernetes_cronjob_never_overlaps_and_runs_the_nightly_task():
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s-cronjob.yaml").read_text())}
    cronjob = documents["CronJob"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert_runs_nightly(container["args"][0])
    env = {item["name"]: item["value"] for item in container["env"]}
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["LUIGI_CONFIG_PATH"] == f"{config_mount['mountPath']}/luigi.cfg"
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(documents["ConfigMap"]["data"]["luigi.cfg"])
    assert int(config["TrainModel"]["nproc"]) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert config["spark"]["master"]


def test_the_multinode_training_launch_parses_and_asks_model_train_for_what_it_has():
    import subprocess

    from model.train import parse_args

    script = DEPLOY / "train-multinode.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--rdzv-backend=c10d" in text and '--nnodes="$NNODES"' in text
    launch = text[text.index("-m model.train"):]
    flags = set(re.findall(r"(--[a-z-]+)", launch))
    values = {flag: "x" for flag in flags}
    args = parse_args([word for flag in sorted(flags) for word in (flag, values[flag])])
    assert all(getattr(args, flag[2:].replace("-", "_")) is not None for flag in flags)


def test_the_als_submission_is_the_same_job_on_yarn_kubernetes_and_standalone(tmp_path):
    # spark-submit is the cluster's: here a stand-in on PATH that prints what it is given
    (tmp_path / "spark-submit").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "spark-submit").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "IMAGE": "reg/cs:1"}
    from jobs.als.job import parse_args
    submitted = {}
    for master in ("yarn", "k8s://https://api:6443", "spark://head:7077"):
        result = subprocess.run(["bash", str(DEPLOY / "als-submit.sh"), master, "hdfs:///plays",
                                 "hdfs:///als", "--rank", "64"], env=env, capture_output=True,
                                text=True, check=True)
        words = result.stdout.split("\n")[:-1]
        assert words[words.index("--master") + 1] == master
        job = next(w for w in words if w.endswith("jobs/als/job.py"))
        submitted[master] = words[words.index(job) + 1:]
        args = parse_args(submitted[master])  # the job takes them
        assert (args.plays, args.out, args.rank) == ("hdfs:///plays", Path("hdfs:///als"), 64)
        if master.startswith("k8s"):
            assert job.startswith("local:///") and "spark.kubernetes.container.image=reg/cs:1" in words
        else:
            assert Path(job).resolve() == REPO / "jobs" / "als" / "job.py"
            assert Path(words[words.index("--properties-file") + 1]).resolve() == \
                DEPLOY / "spark-defaults.conf"
    assert len({tuple(job_args) for job_args in submitted.values()}) == 1


# -- Each deploy file's night, started as the file starts it ----------------------------

def night_settings(cwd: Path, env: dict, command: str, installed: dict[str, Path]) -> dict:
    """What the night that ``command`` starts (in ``cwd``, with ``env``) hands its jobs
    (tests/deploy_probe.py): the paths of the install mapped by ``installed``."""
    def here(text: str) -> str:
        for there, path in installed.items():
            text = text.replace(there, str(path))
        return text
    luigi_args = night_command(command)
    if ">>" in luigi_args:  # the crontab's log
        luigi_args = luigi_args[:luigi_args.index(">>")]
    luigi_args = [("2026-12-01" if w.startswith("$(date") else here(w)) for w in luigi_args]
    environment = {**os.environ, **{key: here(value) for key, value in env.items()}}
    environment.pop("PYTHONPATH", None)  # the installed package, not this checkout's path
    done = subprocess.run([sys.executable, str(REPO / "tests" / "deploy_probe.py"), *luigi_args],
                          cwd=here(str(cwd)), env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def deployed_nights(tmp_path) -> dict[str, tuple]:
    """(working directory, environment, command, install paths) of each deploy file."""
    data = tmp_path / "data"
    data.mkdir(parents=True)
    installed = {"/srv/coldstart/data": data, "/srv/coldstart": REPO}
    lines = [line for line in (DEPLOY / "crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    cron_env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    [entry] = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    cd, command = entry.split(None, 5)[5].split("&&", 1)
    nights = {"crontab": (shlex.split(cd)[1], cron_env, command, installed)}

    service = unit("coldstart-nightly.service")["Service"]
    environment = dict(value.split("=", 1) for value in service["Environment"].split("\n"))
    nights["systemd"] = (service["WorkingDirectory"], environment,
                         shlex.split(service["ExecStart"])[2], installed)

    documents = {doc["kind"]: doc for doc in
                 yaml.safe_load_all((DEPLOY / "k8s-cronjob.yaml").read_text())}
    [container] = documents["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "luigi.cfg").write_text(documents["ConfigMap"]["data"]["luigi.cfg"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    nights["kubernetes"] = (container["workingDir"],
                            {item["name"]: item["value"] for item in container["env"]},
                            container["args"][0],
                            {mounts["config"]: config_dir, mounts["data"]: data})
    return nights


def test_a_night_started_as_each_deploy_file_starts_it_runs_production_settings(tmp_path):
    # What a night would take from no configuration at all: the defaults.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "none.cfg").write_text("")
    defaults = night_settings(empty, {"LUIGI_CONFIG_PATH": str(empty / "none.cfg"),
                                      "COLDSTART_DATA_ROOT": str(empty)},
                              'python -m workflows NightlyFactors --date "$(date +%F)"', {})
    demo = configparser.ConfigParser(interpolation=None)
    demo.read(REPO / "luigi.cfg")
    demo_conf = demo["spark"]["conf"].split("|")
    for name, (cwd, env, command, installed) in deployed_nights(tmp_path).items():
        settings = night_settings(cwd, env, command, installed)
        production = configparser.ConfigParser(interpolation=None)
        production.read(in_repo(env["LUIGI_CONFIG_PATH"]) if name != "kubernetes"
                        else tmp_path / "config" / "luigi.cfg")
        spark = settings["spark"]
        assert spark[spark.index("--master") + 1] == production["spark"]["master"], name
        # none of the demo's Spark settings reaches the job (unless production sets it too)...
        own = set(production.get("spark", "conf", fallback="").split("|"))
        assert not (set(demo_conf) - own) & {spark[i + 1] for i, w in enumerate(spark)
                                             if w == "--conf"}, name
        assert "--driver-memory" not in spark or \
            spark[spark.index("--driver-memory") + 1] == production["spark"]["driver-memory"]
        # ...nor its narrowed networks or its small codebook: the defaults, where production
        # does not set them
        assert settings["net"] == defaults["net"] and settings["bow_codebook"] == \
            defaults["bow_codebook"] != int(demo["ChooseModel"]["bow_codebook"]), name
        if production.has_option("spark", "properties-file"):
            assert spark[spark.index("--properties-file") + 1] == \
                production["spark"]["properties-file"]
    # In the checkout, luigi would have read the demo's settings under the production ones.
    cwd, env, command, installed = deployed_nights(tmp_path / "again")["systemd"]
    in_checkout = night_settings(REPO, env, command, installed)
    assert in_checkout["bow_codebook"] == int(demo["ChooseModel"]["bow_codebook"])
