"""Test-wide settings and shared fixtures."""
import importlib.util
from pathlib import Path

import pytest
import torch

# The suite's networks are tiny: one intra-op thread is faster than two on a small machine, and it
# leaves the second core to the subprocess runs (torchrun, pipeline) that some tests start.
torch.set_num_threads(1)


# ../shared beside the repository: the original project's reference outputs and real dataset samples.
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (the original project's outputs for regenerable weights); skips without it."""
    path = SHARED / "reference"
    if not (path / "fill_weights.py").is_file():
        pytest.skip("../shared/reference (the original project's reference outputs) is not present")
    return path


@pytest.fixture(scope="session")
def fill_weights(reference_dir):
    """The reference's ``fill_weights`` module: ``original_state_dict(student)`` regenerates an original file."""
    spec = importlib.util.spec_from_file_location("fill_weights", reference_dir / "fill_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without a visible device they are skipped (with the reason)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
