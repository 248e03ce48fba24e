"""The committed lock agrees with setup.py, and what it installs loads together."""
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
NO_DEPS = REPO / "requirements-no-deps.txt"


def locked() -> dict[str, str]:
    """Name -> exact version of every lock line whose marker holds here."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier  # one exact pin per line, nothing open
        assert spec.operator == "==", line
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def installed_without_dependencies() -> dict[str, str]:
    """Name -> exact version of what requirements-no-deps.txt pins."""
    lines = [line.split("#", 1)[0].strip() for line in NO_DEPS.read_text().splitlines()]
    return {canonicalize_name(r.name): str(r.specifier)[2:]
            for r in map(Requirement, filter(None, lines))}


def declared() -> list[Requirement]:
    """What setup.py asks for, with the test extra, as the installed metadata says."""
    environment = {**default_environment(), "extra": "test"}
    return [requirement for requirement in map(Requirement, metadata.requires("coldstart-music"))
            if not requirement.marker or requirement.marker.evaluate(environment)]


def test_the_lock_pins_everything_setup_py_asks_for_within_its_ranges():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in setup.py but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside setup.py's {requirement}")


def test_torch_and_torchaudio_are_pinned_as_a_pair():
    exact = {canonicalize_name(r.name): str(r.specifier) for r in declared()
             if canonicalize_name(r.name) in ("torch", "torchaudio")}
    assert exact["torch"] == exact["torchaudio"] and re.fullmatch(r"==[\d.]+", exact["torch"])
    pins = locked()
    assert pins["torch"] == pins["torchaudio"] == exact["torch"][2:]


def test_the_installed_environment_is_the_lock_and_consistent():
    pins = locked()
    for name, version in pins.items():
        assert metadata.version(name).split("+")[0] == version, name
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    # What goes in without its declared dependencies is expected to miss them; nothing else.
    exempt = installed_without_dependencies()
    complaints = [line for line in check.stdout.splitlines() if line.strip()]
    assert check.returncode == 0 or complaints, check.stderr
    broken = [line for line in complaints if canonicalize_name(line.split()[0]) not in exempt]
    assert not broken, check.stdout


def test_the_lock_ends_with_what_is_installed_without_dependencies():
    # The regenerate command appends requirements-no-deps.txt; forgetting it drops musicnn.
    pins = locked()
    for name, version in installed_without_dependencies().items():
        assert pins.get(name) == version, f"requirements.lock lacks {name}=={version}"
    assert LOCK.read_text().endswith(NO_DEPS.read_text())


def test_torchaudio_loads_against_the_installed_torch():
    # A fresh interpreter: the native library is loaded once per process.
    code = ("import torch, torchaudio; "
            "mel = torchaudio.transforms.MelSpectrogram(sample_rate=22050)(torch.zeros(22050)); "
            "print(tuple(mel.shape))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(128, 111)"
