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
    assert all(0.0 <= v <= 100.0 for v in results["miou"].values())
    assert expected <= set(results["seconds"])
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
    assert json.loads((out / "results.json").read_text())["miou"] == results["miou"]
