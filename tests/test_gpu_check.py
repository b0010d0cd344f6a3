"""tools/gpu_check.sh: its CPU dry run (the same steps at the smallest sizes, README command 1 in quick mode
among them) and the JSON it writes; the carried wheels and the offline install's fallback."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest

from furnace.tools import gpu_check

REPO = Path(__file__).resolve().parents[1]
STEP_NAMES = ["environment", "install", "gpu_tests", "benchmark", "pipeline"]


@pytest.mark.slow
def test_cpu_dry_run_writes_every_step_into_out(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--device", "cpu", "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] and report["dry_run"] and report["device"] == "cpu"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEP_NAMES
    for s in report["steps"]:
        assert s["status"] == "passed" and s["seconds"] >= 0 and s["budget_s"] > 0, s
    assert sum(s["budget_s"] for s in report["steps"]) == report["budget_s"]
    # the gpu tests ran and skipped cleanly without CUDA
    tests = steps["gpu_tests"]["tests"]
    assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0
    assert all(v.startswith("skipped: needs a CUDA device") for v in tests["cases"].values())
    # the benchmark's sections, with the projections' arithmetic (flagged as not a projection at tiny sizes)
    bench = json.loads((out / "benchmark.json").read_text())
    assert bench["tiny"] and {"networks", "mgd_step", "teachers", "projections", "data"} <= set(bench)
    assert bench["mgd_step"]["max_loss_rel_diff"] <= 1e-4
    assert set(bench["projections"]) == {f"{r}_{role}" for r in ("voc_1_8", "city_1_8")
                                         for role in ("student", "teacher_resnet101", "teacher_wrn50_2")}
    assert bench["projections"]["voc_1_8_student"]["iterations"] == (10582 - 1323) // 8 * 34
    assert bench["projections_note"].startswith("NOT a projection")
    summary = steps["benchmark"]["summary"]
    assert summary["teachers"].keys() == {"resnet101", "wrn50_2"}
    # the synthetic pipeline end to end, with every stage's result
    results = steps["pipeline"]["results"]
    assert set(results["miou"]) == {"teacher_deep", "teacher_wide", "student_supervised", "student_cps", "student_mgd"}
    assert results["mode"] == "quick" and 0 < results["total_seconds"] <= steps["pipeline"]["seconds"]
    for first, last in steps["pipeline"]["stages"].values():  # kept for a stopped step too: where each stage got to
        assert first.startswith("training ") and "device cpu" in first and last.startswith("finished: iteration 20/20")
    log = (out / "gpu_check.log").read_text()
    assert "share of the run" in log and "all steps passed" in proc.stdout
    check_quick_pipeline(out / "pipeline", steps["pipeline"]["command"], (out / "pipeline.out").read_text())


def check_quick_pipeline(out, cmd, stdout):
    """README command 1 in quick mode (the dry run's last step): every stage trained for real and was evaluated,
    the figures were written, and running the command again skips the five finished stages."""
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
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already trained") == 5
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["miou"] == results["miou"]
    # the table says that this run's wall time does not include the reused stages' training
    assert results["reused_stages"] == [] and "pipeline wall time" in stdout
    assert rerun["reused_stages"] == sorted(expected, key=list(results["miou"]).index)
    assert rerun["seconds"]["student_mgd"] == results["seconds"]["student_mgd"]
    assert "5 of 5 stages were trained by an earlier run" in (out / "results.md").read_text()
    # another seed or mode in the same folder would reuse stages it did not train: it stops at once, losing nothing
    for other_cmd in ([*cmd, "--seed", "1"], [c for c in cmd if c != "--quick"]):
        other = subprocess.run(other_cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "holds a run of mode/seed quick 0" in other.stderr
        assert "pass another --out" in other.stderr and len(other.stderr.strip().splitlines()) == 1
        assert json.loads((out / "results.json").read_text()) == rerun


def test_carried_wheels_hold_the_missing_packages():
    for module, prefix in gpu_check.NEEDED.items():
        wheels = sorted((REPO / "tools/wheels").glob(f"{prefix}-*-py3-none-any.whl"))
        assert len(wheels) == 1, (prefix, wheels)
        names = zipfile.ZipFile(wheels[0]).namelist()
        assert any(n.startswith(f"{module}/__init__.py") or n == f"{module}.py" for n in names), names[:5]
        assert wheels[0].stat().st_size < 500_000


def test_install_falls_back_to_the_wheel_on_pythonpath(tmp_path, monkeypatch):
    """A missing module whose wheel pip refuses (here: no .dist-info) is imported from the zip itself."""
    wheel = tmp_path / "wheels" / "mgdfakepkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mgdfakepkg/__init__.py", "VALUE = 7\n")
    monkeypatch.setattr(gpu_check, "WHEELS", wheel.parent)
    monkeypatch.setattr(gpu_check, "NEEDED", {"mgdfakepkg": "mgdfakepkg", "json": "json"})
    check = gpu_check.Check(tmp_path / "out", 480.0, "cpu", True)
    gpu_check.step_install(check)
    step = check.steps[-1]
    assert step["status"] == "passed", step
    assert step["actions"] == {"mgdfakepkg": f"{wheel.name} on PYTHONPATH", "json": "already installed"}
    assert str(wheel) in check.env["PYTHONPATH"].split(os.pathsep)


def test_a_missing_wheel_fails_the_step_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    monkeypatch.setattr(gpu_check, "NEEDED", {"mgdfakepkg": "mgdfakepkg"})
    check = gpu_check.Check(tmp_path / "out", 480.0, "cpu", True)
    gpu_check.step_install(check)
    assert check.steps[-1]["status"] == "failed"
    assert "bash tools/fetch_gpu_wheels.sh" in check.steps[-1]["actions"]["mgdfakepkg"]
