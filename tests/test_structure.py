"""The code's shape: imports follow the pipeline downward, declared dependencies are used."""
import ast
import configparser
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("jobs", "model", "schemas", "workflows")

# A stage is a module or a folder of jobs/: a stage family lives in one folder
# (jobs/als/, jobs/evaluate/, ...). The doctor checks every stage's environment, so it
# may use them; no stage uses it.
DOCTOR = "doctor"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield module_name(path), path


def stage(module: str) -> str | None:
    """The stage a module of jobs/ belongs to: jobs/<stage>.py or jobs/<stage>/."""
    parts = module.split(".")
    return parts[1] if parts[0] == "jobs" and len(parts) > 1 else None


def test_imports_flow_from_workflows_to_stages_to_shared_contracts():
    wrong = []
    for module, path in sources():
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top not in PACKAGES:
                continue
            if module.startswith("schemas") and top != "schemas":
                wrong.append(f"{module} (shared contracts) imports {imported}")
            if module.startswith("model") and top in ("jobs", "workflows"):
                wrong.append(f"{module} imports {imported}")
            if module.startswith("jobs") and top == "workflows":
                wrong.append(f"{module} imports {imported}")
            mine, theirs = stage(module), stage(imported)
            if (top == "jobs" and theirs is not None and theirs != mine and mine != DOCTOR):
                wrong.append(f"stage {mine} ({module}) imports stage {theirs} ({imported})")
    assert not wrong, "\n".join(wrong)


def test_workflows_import_no_engine():
    code = ("import sys, workflows; "
            "print(sorted(m for m in ('pyspark', 'apache_beam', 'torch', 'torchaudio', 'av') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Declared but not imported by name: torch.utils.tensorboard needs tensorboard;
# pandas is pinned below 3 for pyspark, whose pandas support warns about 3.x.
USED_INDIRECTLY = {"tensorboard", "pandas"}
IMPORT_NAME = {"scikit-learn": "sklearn", "apache-beam": "apache_beam"}


def test_every_declared_dependency_is_used():
    imported = {name.split(".")[0] for _, path in sources() for name in imports_of(path)}
    unused = []
    for requirement in map(Requirement, metadata.requires("coldstart-music")):
        if requirement.marker:  # extras (test tools)
            continue
        name = requirement.name
        if name not in USED_INDIRECTLY and IMPORT_NAME.get(name, name) not in imported:
            unused.append(name)
    assert not unused, f"declared in setup.py but never imported: {unused}"


def test_the_readme_counts_the_demo_styles_the_generator_makes():
    from jobs.demo_catalogue import STYLES

    words = {5: "five", 6: "six", 7: "seven", 8: "eight"}
    found = re.search(r"\((\d[\d,]*) tracks in (\w+) styles", (REPO / "README.md").read_text())
    assert found and found.group(2) == words[len(STYLES)], found and found.group(0)


def test_the_readmes_full_evaluation_command_names_every_model_of_the_default():
    from schemas.config import EvaluateConfig

    command = re.search(r"--EvaluateColdStart-models '(\[[^']*\])'", (REPO / "README.md").read_text())
    assert command and tuple(json.loads(command.group(1))) == EvaluateConfig().models


def test_the_readmes_demo_size_is_the_demos_luigi_cfg():
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "luigi.cfg")
    found = re.search(r"\((\d[\d,]*) tracks in \w+ styles.*?; ([\d,]+) users",
                      (REPO / "README.md").read_text(), re.S)
    assert found and [int(n.replace(",", "")) for n in found.groups()] == [
        int(config["DemoCatalogue"]["n_tracks"]), int(config["DemoCatalogue"]["n_users"])]
