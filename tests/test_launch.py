"""tools/launch.sh and the experiment scripts: the torchrun commands they build on one machine, by
hand over several, and inside a SLURM allocation (faked SLURM variables and a stub ``scontrol``),
printed with DRY_RUN=1; DIST_BACKEND in the process-group setup."""

import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("exp.*/*/script.sh"))
VOC = REPO / "exp.voc/voc8.resnet18_deeplabv3plus/script.sh"
SYNTHETIC = REPO / "exp.synthetic/syn8.resnet18_cps/script.sh"
_LAUNCH_VARS = ("NGPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "DIST_BACKEND", "TORCHRUN", "MAX_RESTARTS")


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in _LAUNCH_VARS}
    env.update(DRY_RUN="1", **extra)
    return env


def _run(script, env, *args):
    proc = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    return proc


def _commands(script, env, *args):
    """The torchrun commands a script prints; each training one must come after its check (the same script and
    arguments with --check, for the job's process count), which is left out of the list."""
    proc = _run(script, env, *args)
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    for i, cmd in enumerate(lines):
        if cmd[0] == "torchrun" and "--max-restarts" in cmd:
            opts, rest = _opts(cmd)
            world = int(opts["--nnodes"]) * int(opts["--nproc_per_node"])
            assert i > 0 and lines[i - 1] == ["env", f"WORLD_SIZE={world}", "python", *rest, "--check"], lines
    return [cmd for cmd in lines if cmd[0] != "env"]


def _opts(cmd):
    """``{--flag: value}`` of a torchrun command line and the rest (script and its arguments)."""
    assert cmd[0] == "torchrun"
    opts, i = {}, 1
    while cmd[i].startswith("--"):
        opts[cmd[i]], i = cmd[i + 1], i + 2
    return opts, cmd[i:]


@pytest.fixture
def stub_scontrol(tmp_path):
    """A ``scontrol`` on PATH that expands the node list as SLURM would (and records its call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "scontrol"
    tool.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" >> {tmp_path}/scontrol.calls\n'
        '[ "$1 $2" = "show hostnames" ] || exit 1\n'
        'case "$3" in "gpu[07-08]") printf "gpu07\\ngpu08\\n";; *) echo "$3";; esac\n'
    )
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_every_experiment_script_uses_the_shared_launcher():
    assert {p.parent for p in SCRIPTS} == {p.parent for p in REPO.glob("exp.*/*/config.py")}  # every experiment has one
    for script in SCRIPTS:
        text = script.read_text()
        assert "source ../../tools/launch.sh" in text and "launch train.py --resume auto" in text, script
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not any("torchrun" in line for line in code), f"{script} builds its own torchrun command"


def test_single_machine_default(tmp_path):
    train, evaluate = _commands(VOC, _env(tmp_path), "labeled_ratio=16")
    opts, rest = _opts(train)
    assert opts == {"--nnodes": "1", "--node_rank": "0", "--nproc_per_node": "1", "--master_addr": "127.0.0.1",
                    "--master_port": "29500", "--max-restarts": "3"}
    assert rest == ["train.py", "--resume", "auto", "labeled_ratio=16"]
    opts, rest = _opts(evaluate)
    assert opts["--nnodes"] == "1" and opts["--nproc_per_node"] == "1" and "--max-restarts" not in opts
    assert rest == ["eval.py", "-e", "all", "labeled_ratio=16"]


def test_max_restarts_sets_torchruns_restarts_of_training(tmp_path):
    train, _ = _commands(VOC, _env(tmp_path, MAX_RESTARTS="0"))
    assert _opts(train)[0]["--max-restarts"] == "0"  # today's behaviour: one failure ends the run
    train, _ = _commands(VOC, _env(tmp_path, MAX_RESTARTS="10"))
    assert _opts(train)[0]["--max-restarts"] == "10"


def test_several_machines_by_hand(tmp_path):
    env = _env(tmp_path, NGPUS="8", NNODES="2", NODE_RANK="1", MASTER_ADDR="host0", MASTER_PORT="29600")
    cmds = _commands(VOC, env)
    assert len(cmds) == 1  # only node 0 evaluates
    opts, _ = _opts(cmds[0])
    assert opts == {"--nnodes": "2", "--node_rank": "1", "--nproc_per_node": "8", "--master_addr": "host0",
                    "--master_port": "29600", "--max-restarts": "3"}


def test_inside_a_slurm_allocation(tmp_path, stub_scontrol):
    slurm = dict(SLURM_JOB_ID="123456", SLURM_NNODES="2", SLURM_NODEID="1", SLURM_JOB_NODELIST="gpu[07-08]",
                 SLURM_GPUS_ON_NODE="4", PATH=f"{stub_scontrol}:{os.environ['PATH']}")
    cmds = _commands(VOC, _env(tmp_path, **slurm))
    assert len(cmds) == 1
    opts, rest = _opts(cmds[0])
    assert opts == {"--nnodes": "2", "--node_rank": "1", "--nproc_per_node": "4", "--master_addr": "gpu07",
                    "--master_port": str(20000 + 123456 % 20000), "--max-restarts": "3"}
    assert rest[0] == "train.py"
    assert (tmp_path / "scontrol.calls").read_text().split() == ["show", "hostnames", "gpu[07-08]"]
    # node 0 of the same job trains with the same rendezvous, then evaluates on its own
    first = _commands(VOC, _env(tmp_path, **{**slurm, "SLURM_NODEID": "0"}))
    assert len(first) == 2 and _opts(first[0])[0]["--master_addr"] == "gpu07"
    assert _opts(first[0])[0]["--node_rank"] == "0" and _opts(first[1])[0]["--nnodes"] == "1"
    assert _opts(first[1])[1][:3] == ["eval.py", "-e", "all"]


def test_explicit_values_win_over_slurm(tmp_path, stub_scontrol):
    env = _env(tmp_path, SLURM_JOB_ID="7", SLURM_NNODES="2", SLURM_NODEID="0", SLURM_JOB_NODELIST="gpu[07-08]",
               MASTER_ADDR="10.0.0.5", MASTER_PORT="30000", NGPUS="2", PATH=f"{stub_scontrol}:{os.environ['PATH']}")
    opts, _ = _opts(_commands(SYNTHETIC, env)[0])
    assert (opts["--master_addr"], opts["--master_port"], opts["--nproc_per_node"]) == ("10.0.0.5", "30000", "2")
    assert not (tmp_path / "scontrol.calls").exists()


def test_single_node_slurm_job_needs_no_scontrol(tmp_path):
    env = _env(tmp_path, SLURM_JOB_ID="9", SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="gpu01",
               PATH="/usr/bin:/bin")
    opts, _ = _opts(_commands(SYNTHETIC, env)[0])
    assert (opts["--nnodes"], opts["--master_addr"], opts["--master_port"]) == ("1", "127.0.0.1", "20009")


@pytest.mark.parametrize("bad, message", [
    (dict(SLURM_JOB_ID="9", SLURM_NNODES="2", SLURM_NODEID="0", SLURM_JOB_NODELIST="a[1-2]", PATH="/usr/bin:/bin"),
     "scontrol not found"),
    (dict(NNODES="2", NODE_RANK="2"), "NODE_RANK=2 is not below NNODES=2"),
    (dict(NGPUS="eight"), "must be integers"),
    (dict(MAX_RESTARTS="-1"), "MAX_RESTARTS=-1 must be integers"),
    (dict(DIST_BACKEND="mpi"), "DIST_BACKEND=mpi is not nccl or gloo"),
])
def test_bad_settings_are_one_line_errors(tmp_path, bad, message):
    proc = _run(SYNTHETIC, _env(tmp_path, **bad))
    assert proc.returncode != 0 and message in proc.stderr and proc.stdout == ""


def test_slurm_example_runs_the_script_once_per_node():
    text = (REPO / "tools/slurm_example.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text
    assert 'srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash "$EXPERIMENT/script.sh" "$@"' in text
    # the warning before the time limit goes to the batch script alone (B:), which may requeue the job
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --requeue" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    proc = subprocess.run(["bash", "-n", str(REPO / "tools/slurm_example.sbatch")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dist_backend_override(monkeypatch):
    import torch

    from furnace.engine.dist import _backend
    from furnace.utils import UserError

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv("DIST_BACKEND", raising=False)
    assert (_backend(cpu), _backend(cuda)) == ("gloo", "nccl")
    monkeypatch.setenv("DIST_BACKEND", "gloo")
    assert _backend(cuda) == "gloo"
    monkeypatch.setenv("DIST_BACKEND", "nccl")
    with pytest.raises(UserError, match="needs CUDA"):
        _backend(cpu)
    monkeypatch.setenv("DIST_BACKEND", "")
    assert _backend(cpu) == "gloo"


# ----------------------------------------------------------------------------- signals

# Stand-in for torchrun: like it, TERM, INT and HUP stop it (it then waits for its workers to save and exit)
# and USR1 is not handled (its default action would kill it). It records what it gets.
FAKE_TORCHRUN = """\
import os, signal, sys, time
from pathlib import Path

record = Path(os.environ["FAKE_TORCHRUN_RECORD"])


def note(text):
    with record.open("a") as f:
        f.write(text + "\\n")


got = []


def handle(signum, frame):
    note(signal.Signals(signum).name)
    got.append(signum)


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, handle)
note(f"started {os.getpid()} {os.getpgrp()} " + next(a for a in sys.argv[1:] if a.endswith(".py")))
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # the workers finish their iteration and save: a second signal would show here
note("exit")
sys.exit(1 if got else 0)
"""


@pytest.mark.parametrize("how", ["TERM to the script", "USR1 to every process (SLURM)", "Ctrl-C (INT to the group)"])
def test_a_signal_reaches_torchrun_once_and_the_script_stops_after_it(tmp_path, how):
    record = tmp_path / "record"
    fake = tmp_path / "fake_torchrun.py"
    fake.write_text(FAKE_TORCHRUN)
    env = _env(tmp_path, TORCHRUN=f"{sys.executable} {fake}", FAKE_TORCHRUN_RECORD=str(record), CHECK="0")
    del env["DRY_RUN"]
    # SIGINT as a terminal would deliver it: a shell that starts with it ignored (pytest run with `&`) cannot trap it
    proc = subprocess.Popen(["bash", str(SYNTHETIC)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not (record.is_file() and record.read_text().endswith("\n")):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.05)
        _, pid, pgid, script = record.read_text().split()
        assert script == "train.py" and int(pgid) != os.getpgid(proc.pid)  # its own process group
        if how == "TERM to the script":
            os.kill(proc.pid, signal.SIGTERM)
            expected = "TERM", 128 + signal.SIGTERM
        elif how == "USR1 to every process (SLURM)":  # as slurmstepd signals every process of a step
            os.kill(proc.pid, signal.SIGUSR1)
            os.kill(int(pid), signal.SIGUSR1)
            expected = "TERM", 128 + signal.SIGUSR1
        else:
            os.killpg(proc.pid, signal.SIGINT)
            expected = "INT", 128 + signal.SIGINT
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = record.read_text().splitlines()
    # one signal reached torchrun, the script waited for it to end, and evaluation did not start
    assert lines[1:] == [f"SIG{expected[0]}", "exit"], (lines, output)
    assert proc.returncode == expected[1], output


def test_a_config_or_data_error_stops_the_script_in_one_line_before_torchrun(tmp_path):
    """`train.py --check` runs first, for real: a bad key or missing data is one line and exit 2, and torchrun (which
    would restart the failed workers MAX_RESTARTS times) never starts; a run that passes goes on to torchrun."""
    from furnace.datasets.make_synthetic import generate

    record = tmp_path / "record"
    fake = tmp_path / "fake_torchrun.py"
    fake.write_text("import os, sys\nopen(os.environ['FAKE_TORCHRUN_RECORD'], 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    env = _env(tmp_path, TORCHRUN=f"{sys.executable} {fake}", FAKE_TORCHRUN_RECORD=str(record), NGPUS="2",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    del env["DRY_RUN"]
    data = [f"data_root={tmp_path / 'DATA'}", f"output_dir={tmp_path / 'out'}"]
    for args, message in [(["max_iter=5"], "config: unknown key 'max_iter'"),
                          ([], "split list not found"), (["global_batch=7"], "global_batch=7")]:
        proc = _run(SYNTHETIC, env, *data, *args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert not record.exists()
    generate(tmp_path / "DATA" / "synthetic", seed=0, num_train=16, num_val=4, size=32, ratios=(8,))
    proc = _run(SYNTHETIC, env, *data)
    assert proc.returncode == 0 and "check passed: cps resnet18 on synthetic, 2 process(es)" in proc.stdout, proc.stderr
    assert record.read_text().splitlines()[0].endswith(f"train.py --resume auto {' '.join(data)}")
