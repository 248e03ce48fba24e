"""Cold-start music recommendation: ALS -> mel-spectrograms -> CNN -> cold-track factors."""
from setuptools import find_packages, setup

setup(
    name="coldstart-music",
    version="0.1.0",
    description="Predict collaborative-filtering factors of cold-start tracks from their audio.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["jobs", "jobs.*", "model", "model.*", "schemas",
                                    "schemas.*", "workflows", "workflows.*"]),
    # Compatible ranges for installing into an environment of one's own; the README's
    # commands install the exact set in requirements.lock. torchaudio's native library
    # loads only against the torch it was built with, so the two are pinned as a pair.
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "pyspark>=4.0,<5",
        "apache-beam>=2.60",
        "luigi>=3.5",
        "pyarrow>=15",
        "numpy>=1.26",
        "av>=14",
        "scikit-learn>=1.4",
        "pandas<3",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "scipy>=1.10",
        "fsspec>=2023.1",
        "voyager>=2.0",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.2", "implicit>=0.7", "pyyaml>=6"],
    },
)
