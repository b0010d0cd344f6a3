"""One command that shows every CUDA path of the project working, within a few minutes of GPU time.

    bash tools/gpu_check.sh                      # on a machine with one CUDA GPU; results in $OUT
    python -m furnace.tools.gpu_check [--device cuda|cpu] [--dry-run] [--out DIR] [--budget-s 480]

Steps, each timed against its share of the budget and stopped past twice that, so the later ones still run:
environment, install (tensorboardX and easydict offline from tools/wheels), gpu_tests (pytest -m gpu), benchmark
and pipeline (the README's synthetic quick start). Writes gpu_check.json, gpu_check.log, gpu_tests.xml,
benchmark.json and pipeline/ into --out (else $OUT, else ./gpu_check_out). ``--device cpu --dry-run``: the same
steps at the smallest sizes, a check of the script itself. Exit status 0 when every step passed.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "tools" / "wheels"
NEEDED = {"easydict": "easydict", "tensorboardX": "tensorboardx"}  # import name -> wheel file prefix
# Share of the budget per step (seconds of the default 480 s; on an H200 gpu_tests took 164 s, benchmark 154 s).
SHARES = {"environment": 10, "install": 20, "gpu_tests": 150, "benchmark": 150, "pipeline": 150}


class Check:
    """The output folder, the log, the budget clock and the record of every step."""

    def __init__(self, out: Path, budget_s: float, device: str, dry_run: bool):
        self.out, self.budget_s, self.device, self.dry_run = out, budget_s, device, dry_run
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu_check.log", "w")
        self.start = time.perf_counter()
        pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
        self.steps: list[dict] = []
        self.report = {"device": device, "dry_run": dry_run, "budget_s": budget_s, "out": str(out), "steps": self.steps}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def budget(self, name: str) -> float:
        return self.budget_s * SHARES[name] / sum(SHARES.values())

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name: str, command: list[str]) -> dict:
        """Run one step's command (output into the log), timed against its budget."""
        budget = self.budget(name)
        # stop a runaway step at twice its share, or where the whole budget (plus a quarter) ends
        limit = max(30.0, min(2 * budget, 1.25 * self.budget_s - self.elapsed()))
        self.say(f"\n=== {name}: {' '.join(command)}  (budget {budget:.0f} s, stopped after {limit:.0f} s)")
        t0 = time.perf_counter()
        with open(self.out / f"{name}.out", "w") as sink:
            proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=limit)
                status = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                proc.kill()
                rc, status = proc.wait(), "timeout"
        seconds = time.perf_counter() - t0
        text = (self.out / f"{name}.out").read_text(errors="replace")
        self.log.write(text)
        self.say("\n".join(f"  | {line}" for line in text.strip().splitlines()[-12:]))
        return self.record(name, status, seconds, command=command, rc=rc)

    def record(self, name: str, status: str, seconds: float, **details) -> dict:
        budget = self.budget(name)
        step = {"name": name, "status": status, "seconds": round(seconds, 1), "budget_s": round(budget, 1),
                "over_budget": seconds > budget, **details}
        self.steps.append(step)
        over = f"  OVER BUDGET by {seconds - budget:.0f} s" if seconds > budget else ""
        self.say(f"=== {name}: {status} in {seconds:.1f} s (budget {budget:.0f} s){over}")
        return step


def step_environment(check: Check) -> None:
    t0 = time.perf_counter()
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16_supported=torch.cuda.is_bf16_supported())
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    check.report["environment"] = info
    check.say("environment: " + json.dumps(info))
    status = "failed" if check.device == "cuda" and not torch.cuda.is_available() else "passed"
    if status == "failed":
        check.say("no CUDA device is visible: the GPU steps will fail (use --device cpu --dry-run to check the script)")
    check.record("environment", status, time.perf_counter() - t0, **info)


def _importable(check: Check, module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=check.env, capture_output=True, timeout=60)
    return probe.returncode == 0


def step_install(check: Check) -> None:
    """tensorboardX and easydict without the network: pip from the carried wheels, else PYTHONPATH."""
    t0 = time.perf_counter()
    actions, status = {}, "passed"
    for module, prefix in NEEDED.items():
        if _importable(check, module):
            actions[module] = "already installed"
            continue
        wheels = sorted(WHEELS.glob(f"{prefix}-*.whl"))
        if not wheels:
            actions[module] = f"missing, and no {prefix}-*.whl in {WHEELS} (bash tools/fetch_gpu_wheels.sh)"
            status = "failed"
            continue
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", str(wheels[-1])],
                             env=check.env, capture_output=True, text=True, timeout=120)
        check.log.write(pip.stdout + pip.stderr)
        if pip.returncode == 0 and _importable(check, module):
            actions[module] = f"pip install --no-index {wheels[-1].name}"
            continue
        # pure-Python wheels import from the zip file itself
        check.env["PYTHONPATH"] = os.pathsep.join([check.env["PYTHONPATH"], str(wheels[-1])])
        ok = _importable(check, module)
        actions[module] = f"{wheels[-1].name} on PYTHONPATH" + ("" if ok else ": still not importable")
        status = status if ok else "failed"
    check.say("install: " + json.dumps(actions))
    check.record("install", status, time.perf_counter() - t0, actions=actions, pythonpath=check.env["PYTHONPATH"])


def step_gpu_tests(check: Check) -> None:
    xml = check.out / "gpu_tests.xml"
    step = check.run("gpu_tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                                   f"--junitxml={xml}", "tests/test_gpu.py"])
    counts = {}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        counts["cases"] = {}
        for case in suite.iter("testcase"):
            found = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            detail = found.get("message", "") if found is not None else ""
            counts["cases"][case.get("name")] = (found.tag if found is not None else "passed") + (
                f": {detail.splitlines()[0][:200]}" if detail else "")
    step["tests"] = counts


def step_benchmark(check: Check) -> None:
    out = check.out / "benchmark.json"
    step = check.run("benchmark", [sys.executable, "-m", "furnace.tools.benchmark", "--device", check.device,
                                   "--json", str(out), *(["--tiny", "--threads", "1"] if check.dry_run else [])])
    if out.is_file():
        bench = json.loads(out.read_text())
        m = bench.get("mgd_step", {})
        keys = ("batch", "crop", "reference_ms", "optimized_ms", "speedup", "images_per_s", "achieved_tflops",
                "gpu_peak_tflops_bf16", "gpu_peak_label", "utilisation", "peak_mem_gb", "max_loss_rel_diff",
                "max_loss_rel_diff_fp32")
        step["summary"] = {
            "mgd_step": {k: m.get(k) for k in keys},
            "eval_images_per_s": {a: s.get("eval_images_per_s") for a, s in bench.get("networks", {}).items()
                                  if "eval_images_per_s" in s},
            "teachers": {a: t.get("step_ms") for a, t in bench.get("teachers", {}).items()},
            "projections_hours": {k: p["hours"] for k, p in bench.get("projections", {}).items()},
            "projections_note": bench.get("projections_note"),
        }


def step_pipeline(check: Check) -> None:
    folder = check.out / "pipeline"
    if folder.is_dir():  # a stage finished by an earlier check would be reused, hiding its wall time
        shutil.rmtree(folder)
    step = check.run("pipeline", [sys.executable, "exp.synthetic/pipeline.py", "--out", str(folder),
                                  *(["--quick"] if check.dry_run else [])])
    stages = {}  # where each stage got to (device, schedule, last progress line), also when the step was stopped
    for log in sorted(folder.glob("*/stdout.txt")):
        lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
        stages[log.parent.name] = [ln for ln in lines if ln.startswith("training ")][:1] + lines[-1:]
        check.say(f"  [{log.parent.name}] " + "  ...  ".join(stages[log.parent.name]))
    step["stages"] = stages
    results = folder / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        step["results"] = {k: r.get(k) for k in ("miou", "total_seconds", "seconds", "jobs", "mode")}


STEPS = {"environment": step_environment, "install": step_install, "gpu_tests": step_gpu_tests,
         "benchmark": step_benchmark, "pipeline": step_pipeline}


def where_time_went(check: Check) -> str:
    lines = ["", f"{'step':<12} {'status':<8} {'seconds':>8} {'budget':>7}  share of the run"]
    total = max(check.elapsed(), 1e-9)
    for s in check.steps:
        flag = "  <- over budget" if s["over_budget"] else ""
        lines.append(f"{s['name']:<12} {s['status']:<8} {s['seconds']:>8.1f} {s['budget_s']:>7.0f}  "
                     f"{100 * s['seconds'] / total:5.1f} %{flag}")
    lines.append(f"{'total':<12} {'':<8} {total:>8.1f} {check.budget_s:>7.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m furnace.tools.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dry-run", action="store_true", help="smallest sizes (use with --device cpu to check the script)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="output folder (default $OUT)")
    p.add_argument("--budget-s", type=float, default=480.0, help="time budget of the whole check (default 480)")
    p.add_argument("--skip", nargs="*", default=[], choices=tuple(STEPS), help="steps to leave out")
    args = p.parse_args(argv)
    check = Check(Path(args.out).resolve(), args.budget_s, args.device, args.dry_run)
    check.say(f"gpu_check: device {args.device}{' (dry run)' if args.dry_run else ''}, budget {args.budget_s:.0f} s, "
              f"output {check.out}")
    for name, step in STEPS.items():
        if name in args.skip:
            continue
        try:
            step(check)
        except Exception as err:  # a broken step is recorded; the others still run
            check.record(name, "failed", 0.0, error=f"{type(err).__name__}: {err}")
    check.report["total_s"] = round(check.elapsed(), 1)
    check.report["passed"] = all(s["status"] == "passed" for s in check.steps)
    (check.out / "gpu_check.json").write_text(json.dumps(check.report, indent=1, default=str) + "\n")
    check.say(where_time_went(check))
    verdict = "all steps passed" if check.report["passed"] else "SOME STEPS FAILED"
    check.say(f"{verdict}; wrote {check.out / 'gpu_check.json'}")
    check.log.close()
    return 0 if check.report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
