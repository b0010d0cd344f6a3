"""Install the `furnace` package of MGD-SSSS.

    pip install -e .            # runtime
    pip install -e ".[test]"    # + what the test suite needs
    pip install -e ".[deploy]"  # + onnx, onnxruntime: furnace.tools.export and predict --onnx
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# one version, furnace.__version__ (read, not imported: the dependencies may not be installed yet)
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "furnace" / "__init__.py").read_text()).group(1)


def read_requirements():
    lines = (HERE / "requirement.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="mgd-ssss",
    version=VERSION,
    description="Multi-granularity distillation for lightweight semi-supervised semantic segmentation (MGD, ECCV 2022)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["furnace", "furnace.*"]),
    install_requires=read_requirements(),
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1", "pytest-xdist>=3", "scipy>=1.10", "onnx>=1.15", "onnxruntime>=1.17"],
        "deploy": ["onnx>=1.15", "onnxruntime>=1.17"],  # furnace.tools.export, predict --onnx
        "voc": ["scipy>=1.10"],  # prepare_voc reads SBD's .mat labels
    },
    license="MIT",
)
