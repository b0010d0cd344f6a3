"""The synthetic pipeline's reuse of finished stages (README command 1 in quick mode runs end to end in
test_gpu_check.py, the last step of the GPU check's dry run)."""
import json
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def _pipeline_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_pipeline", REPO / "exp.synthetic" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_reuses_a_stage_evaluation_only_when_it_was_made_with_the_same_settings(tmp_path):
    stage_result = _pipeline_module().stage_result
    snapshot = tmp_path / "checkpoints" / "epoch-4.pth"
    settings = {"crop": 64, "scales": [1.0], "flip": False}
    assert stage_result(snapshot, settings) is None  # no results file: the pipeline evaluates
    snapshot.parent.mkdir()
    entry = {"epoch": 4, "miou": 0.4321, "iou": {"background": 0.9, "dots_dark": None}, "eval": settings}
    (snapshot.parent / "eval_results.json").write_text(
        json.dumps({"results": {"epoch-4.pth": entry}, "last": "epoch-4.pth", "best": "epoch-4.pth"}))
    assert stage_result(snapshot, settings) == {"miou": 0.4321, "iou": {"background": 0.9, "dots_dark": None}}
    assert stage_result(snapshot, {**settings, "flip": True}) is None  # evaluated differently
    assert stage_result(snapshot.with_name("epoch-3.pth"), settings) is None  # another snapshot
