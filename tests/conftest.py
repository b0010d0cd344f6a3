"""Test-wide settings and shared fixtures."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# The suite's networks are tiny: one intra-op thread is faster than two on a small machine, and it
# leaves the second core to the subprocess runs (torchrun, pipeline) that some tests start.
torch.set_num_threads(1)


# engine_toy.py (the engine tests' toy task, also run as a script by torchrun) is imported by name
sys.path.insert(0, str(Path(__file__).parent))

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


def _write_teachers(folder, num_classes: int, *, seed: int | None = None, spread_bn: bool = False) -> dict:
    from furnace.models import build_model, save_segmentor

    paths = {}
    for key, arch in (("teacher_deep", "resnet101"), ("teacher_wide", "wrn50_2")):
        torch.manual_seed(len(arch) if seed is None else seed)
        net = build_model(arch, num_classes, verbose=False, width_mult=0.125, head_channels=16)
        if spread_bn:  # non-trivial running statistics, so that a changed BN buffer would show
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        paths[key] = str(Path(folder) / f"{arch}.pth")
        save_segmentor(net, paths[key])
    return paths


@pytest.fixture(scope="session")
def write_teachers():
    """``write_teachers(folder, num_classes, *, seed=None, spread_bn=False)`` writes tiny random teacher files
    (resnet101 and wrn50_2 at width 1/8, head 16) as ``folder/<arch>.pth`` and returns ``{"teacher_deep":
    path, "teacher_wide": path}``, config overrides of an MGD run. Each network is built after
    ``torch.manual_seed(seed)`` (None: the length of its architecture's name); ``spread_bn`` draws its
    BatchNorm running statistics at random."""
    return _write_teachers


@pytest.fixture
def toy_snapshot_io(monkeypatch):
    """The engine writes and reads its snapshots in engine_toy's format (the toy network) during the test."""
    from engine_toy import toy_load_snapshot, toy_save_snapshot

    from furnace.engine import checkpoint

    monkeypatch.setattr(checkpoint, "save_snapshot", toy_save_snapshot)
    monkeypatch.setattr(checkpoint, "load_snapshot", toy_load_snapshot)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without a visible device they are skipped (with the reason)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
