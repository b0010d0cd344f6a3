"""Cluster faults end to end, through an experiment's real ``script.sh`` (and ``tools/slurm_example.sbatch``)
with two gloo processes on the CPU: a rank killed with ``kill -9`` (torchrun restarts the group, which
resumes), a rank that stops answering (the others fail within ``dist_timeout_s``), and SLURM's warning before
the time limit (save, requeue, resume) with stand-ins for ``srun`` and ``scontrol``. Each finished run must
hold the very network (every tensor equal) of an uninterrupted two-process run.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from furnace.datasets.make_synthetic import generate
from furnace.engine import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "exp.synthetic/syn8.resnet18_supervised/script.sh"  # copied into the tiny experiment
EXP = "exp.faults/tiny"
EPOCHS, ITERS_PER_EPOCH = 3, 5
# The experiment: tiny networks, 32 px crops, 3 epochs of 5 iterations (1/8 labeled of 24 images).
CONFIG_PY = """from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.update(method="supervised", arch="resnet18", labeled_ratio=8, width_mult=0.125, head_channels=16, crop_size=32,
         eval_crop=32, eval_batch=4, global_batch=4, epochs=3, num_workers=0, device="cpu", log_every=1,
         snapshot_last=1, seed=3)
"""
# train.py, also noting each process's pid (rank -> pid) for the test to kill or stop
TRAIN_PY = """import os
from pathlib import Path

from config import config
from furnace.run import train_main

if __name__ == "__main__":
    if "RANK" in os.environ:  # a torchrun worker, not script.sh's --check before torchrun
        Path(os.environ["PID_DIR"], f"rank{os.environ['RANK']}").write_text(str(os.getpid()))
    train_main(config)
"""
EVAL_PY = """from config import config
from furnace.run import eval_main

if __name__ == "__main__":
    eval_main(config)
"""
# srun stand-in: runs its command as the step's one task; a signal it gets goes, as slurmstepd sends it,
# to every process of the step (the task and all its descendants, torchrun and its workers included)
SRUN = """#!{python}
import os, signal, subprocess, sys

args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
task = subprocess.Popen(args)


def step():
    children = {{}}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{{entry}}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [task.pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def forward(signum, frame):
    for pid in step():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


signal.signal(signal.SIGUSR1, forward)
status = task.wait()
sys.exit(status if status >= 0 else 128 - status)
"""
SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$SCONTROL_CALLS"
"""

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A repository-shaped folder (tools/ of this one, the tiny experiment with the real script.sh), its
    DATA/, stand-in srun/scontrol, and the network of an uninterrupted two-process run."""
    base = tmp_path_factory.mktemp("cluster")
    root = base / "repo"
    exp = root / EXP
    exp.mkdir(parents=True)
    (root / "tools").symlink_to(REPO / "tools")
    shutil.copy(SCRIPT, exp / "script.sh")
    for name, text in (("config.py", CONFIG_PY), ("train.py", TRAIN_PY), ("eval.py", EVAL_PY)):
        (exp / name).write_text(text)
    data = base / "DATA"
    generate(data / "synthetic", seed=0, num_train=24, num_val=8, size=32, ratios=(8,))
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN.format(python=sys.executable)), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    c = {"root": root, "exp": exp, "data": data, "bin": bin_dir}
    reference = base / "reference"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "train.py"], cwd=exp, env=run_env(c, reference), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    c["reference"] = network(reference)
    return c


def run_env(c, out: Path, **extra) -> dict:
    """The environment of one run writing to ``out`` (two gloo processes on the CPU)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                       "MASTER_PORT", "MAX_RESTARTS", "DRY_RUN")}
    (out / "pids").mkdir(parents=True, exist_ok=True)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DATA_ROOT=str(c["data"]), OUTPUT_DIR=str(out),
               PID_DIR=str(out / "pids"), NGPUS="2", DIST_BACKEND="gloo", MASTER_PORT=str(free_port()),
               TORCHRUN=f"{sys.executable} -m torch.distributed.run",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PATH=os.pathsep.join([str(c["bin"]), str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.update(extra)
    return env


def network(out: Path) -> dict:
    state = ckpt.load_training_state(out / "checkpoints" / "latest.pth")
    assert state["global_iter"] == EPOCHS * ITERS_PER_EPOCH and state["world_size"] == 2
    return state["method"]


def assert_same_network(out: Path, reference: dict) -> None:
    net = network(out)
    assert net.keys() == reference.keys()
    different = [k for k in net if not torch.equal(net[k], reference[k])]
    assert not different, f"differs from the uninterrupted run in {different[:5]}"


def start(cmd, cwd, env) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_until(done, what: str, proc=None, timeout=300.0, poll=0.02) -> None:
    """Poll ``done()`` until it is true; fail if ``proc`` (when given) ends first or ``timeout`` passes."""
    deadline = time.time() + timeout
    while not done():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n" + proc.stdout.read()[-4000:])
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def wait_for_iteration(out: Path, it: int, proc) -> None:
    log = out / "log.txt"
    wait_until(lambda: log.is_file() and f" it {it}/" in log.read_text(), f"iteration {it}", proc)


def rank_pid(out: Path, rank: int) -> int:
    return int((out / "pids" / f"rank{rank}").read_text())


def finish(proc, timeout) -> str:
    """The output of ``proc`` once it ends; everything it started is killed if it does not within ``timeout``."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        raise AssertionError(f"still running after {timeout} s:\n" + proc.communicate()[0][-4000:]) from None
    return output


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (torchrun's workers run in sessions of their own)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_rank_killed_mid_run_is_restarted_by_torchrun_and_the_run_ends_bit_identical(cluster, tmp_path):
    out = tmp_path / "run"
    pick = random.Random()
    at, victim = pick.randint(2, EPOCHS * ITERS_PER_EPOCH - 5), pick.randint(0, 1)
    # saves by time every ~0.1 s, decided on rank 0: the restart resumes from wherever the last one was
    proc = start(["bash", "script.sh", "save_every_minutes=0.002"], cluster["exp"], run_env(cluster, out))
    try:
        wait_for_iteration(out, at, proc)
        # and for a first complete save, so that there is something to resume from
        wait_until((out / "checkpoints" / "latest.pth").is_file, "a first latest.pth", proc, timeout=60, poll=0.01)
        os.kill(rank_pid(out, victim), signal.SIGKILL)
        output = finish(proc, timeout=600)
    finally:
        kill_tree(proc.pid)
    where = f"(rank {victim} killed after iteration {at})"
    assert proc.returncode == 0, where + output[-4000:]
    assert "exitcode: -9" in output, where + output[-4000:]  # torchrun saw it die ...
    log = (out / "log.txt").read_text()
    assert f"resumed from {out / 'checkpoints' / 'latest.pth'}" in log, where  # ... and the restart resumed
    assert_same_network(out, cluster["reference"])
    assert (out / "checkpoints" / "eval_results.json").is_file()  # script.sh went on to evaluate


def test_a_rank_that_stops_answering_fails_the_others_within_the_timeout(cluster, tmp_path):
    out = tmp_path / "run"
    env = run_env(cluster, out, MAX_RESTARTS="0")
    # save_every_minutes=0: latest.pth at each epoch's end, so the first epoch's save is on disk when rank 1 stops
    proc = start(["bash", "script.sh", "epochs=200", "dist_timeout_s=5", "save_every_minutes=0"], cluster["exp"], env)
    stopped = None
    try:
        wait_for_iteration(out, ITERS_PER_EPOCH + 2, proc)  # past the first epoch's save
        stopped, waiting = rank_pid(out, 1), rank_pid(out, 0)
        os.kill(stopped, signal.SIGSTOP)
        # rank 0 blocks on rank 1 in the next collective; torch's default would wait 30 minutes
        wait_until(lambda: not alive(waiting), "rank 0 to stop waiting for the stopped rank", timeout=5 + 40, poll=0.1)
        os.kill(stopped, signal.SIGCONT)  # torchrun's SIGTERM is pending there: it may end now
        output = finish(proc, timeout=120)
    finally:
        if stopped and alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        kill_tree(proc.pid)
    assert proc.returncode != 0
    # gloo's words for its 5 s timeout: an operation's wait, or the socket's read or write under it
    rank0 = "\n".join(line for line in output.splitlines() if line.startswith("[rank0]"))
    assert re.search(r"Timed out waiting 5000ms|Read timeout|Write timeout|timeout caused pair closure", rank0), \
        rank0[-4000:] or output[-4000:]
    assert "evaluating" not in output  # script.sh stopped after the failed training
    assert ckpt.load_training_state(out / "checkpoints" / "latest.pth")["global_iter"] >= ITERS_PER_EPOCH


def test_slurm_time_limit_warning_saves_requeues_and_the_requeued_job_resumes_bit_identical(cluster, tmp_path):
    out, calls = tmp_path / "run", tmp_path / "scontrol.calls"
    slurm = dict(SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
                 SLURM_SUBMIT_DIR=str(cluster["root"]), SCONTROL_CALLS=str(calls))
    sbatch = ["bash", "tools/slurm_example.sbatch", EXP]
    at = random.Random().randint(2, EPOCHS * ITERS_PER_EPOCH - 5)
    proc = start(sbatch, cluster["root"], run_env(cluster, out, **slurm))
    try:
        wait_for_iteration(out, at, proc)
        os.kill(proc.pid, signal.SIGUSR1)  # --signal=B:USR1@300: SLURM signals the batch script alone
        output = finish(proc, timeout=300)
    finally:
        kill_tree(proc.pid)
    assert proc.returncode == 128 + signal.SIGUSR1, f"(signalled after iteration {at})" + output[-4000:]
    assert output.count("received SIG") == 1, output[-4000:]  # USR1 and the launcher's TERM: one stop
    stopped = ckpt.load_training_state(out / "checkpoints" / "latest.pth")["global_iter"]
    assert f"interrupted by SIGUSR1 after iteration {stopped}" in output \
        or f"interrupted by SIGTERM after iteration {stopped}" in output, output[-4000:]
    assert at <= stopped < EPOCHS * ITERS_PER_EPOCH
    assert "evaluating" not in output and not (out / "checkpoints" / "eval_results.json").exists()
    assert calls.read_text().split() == ["requeue", "4242"]

    # SLURM starts the requeued job: the same script, which resumes and then evaluates
    calls.unlink()
    proc = start(sbatch, cluster["root"], run_env(cluster, out, SLURM_RESTART_COUNT="1", **slurm))
    try:
        output = finish(proc, timeout=600)
    finally:
        kill_tree(proc.pid)
    assert proc.returncode == 0, output[-4000:]
    assert f"resumed from {out / 'checkpoints' / 'latest.pth'}: epoch" in output
    assert not calls.exists()
    assert_same_network(out, cluster["reference"])
    assert (out / "checkpoints" / "eval_results.json").is_file()
