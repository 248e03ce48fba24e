"""deploy/ as far as it can be checked offline: each file parses, runs the production
settings, makes a failed night visible, and names only what exists."""
import configparser
import re
import shlex
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


def assert_runs_nightly(command: str) -> None:
    """``command`` runs this package's NightlyFactors with a date, a task that exists."""
    words = shlex.split(command.replace("\\%", "%"))
    assert words[words.index("--module") + 1] == "workflows"
    task = words[words.index("--module") + 2]
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
