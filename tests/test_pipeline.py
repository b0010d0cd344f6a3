"""The README's first command in quick mode: every stage trains for real and the results are written."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_synthetic_pipeline_quick_runs_every_stage_and_skips_them_on_rerun(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "exp.synthetic" / "pipeline.py"), "--quick", "--seed", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    expected = {"teacher_deep", "teacher_wide", "student_supervised", "student_cps", "student_mgd"}
    assert set(results["miou"]) == expected
    assert len(set(results["miou"].values())) == len(expected)  # five different networks, each evaluated
    assert expected <= set(results["seconds"])
    # each stage's run evaluated its final network on the val set; the table reports those evaluations
    for key in expected:
        recorded = json.loads((out / key / "checkpoints" / "eval_results.json").read_text())
        assert recorded["last"] == "epoch-2.pth"
        assert results["miou"][key] == round(100 * recorded["results"]["epoch-2.pth"]["miou"], 2)
    # the MGD student really learned from the teachers the CPS runs exported
    teachers = out / "DATA" / "model-weight" / "teachers"
    assert (teachers / "synthetic_1-8_resnet101.pth").is_file() and (teachers / "synthetic_1-8_wrn50_2.pth").is_file()
    assert "training MGD" in (out / "student_mgd" / "log.txt").read_text()
    assert "| student_mgd |" in (out / "results.md").read_text()
    for fig in ("miou.png", "qualitative.png"):
        image = cv2.imread(str(out / fig))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 300

    # finished stages are skipped when the pipeline runs again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already trained") == 5
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["miou"] == results["miou"]
    # the table says that this run's wall time does not include the reused stages' training
    assert results["reused_stages"] == [] and "pipeline wall time" in proc.stdout
    assert rerun["reused_stages"] == sorted(expected, key=list(results["miou"]).index)
    assert rerun["seconds"]["student_mgd"] == results["seconds"]["student_mgd"]
    assert "5 of 5 stages were trained by an earlier run" in (out / "results.md").read_text()


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
