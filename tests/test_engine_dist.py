"""End-to-end runs in real processes: 2-process torchrun (gloo, CPU) and SIGTERM handling."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_toy import build_toy, toy_config, toy_load_snapshot

from furnace.engine import checkpoint as ckpt
from furnace.engine import Evaluator
from furnace.run import train

TOY = str(Path(__file__).with_name("engine_toy.py"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun_toy(out, result, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TOY,
           "--out", str(out), "--micro-batch", "1", "--max-iters", "3", "--then-eval", "--result", str(result),
           *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(result.read_text())
    assert res["world"] == 2 and res["status"] == "finished" and res["global_iter"] == 3
    return res


@pytest.mark.slow
def test_two_process_torchrun_matches_a_single_process(tmp_path, toy_snapshot_io):
    out = tmp_path / "ddp"
    ddp = _torchrun_toy(out, tmp_path / "ddp.json", "--bn", "0")

    # 2 processes x 2 accumulated micro-batches of 1 (DDP no_sync on the first) == 1 process x 4 x 1
    cfg = toy_config(tmp_path / "single", micro_batch=1, max_iters=3)
    method, loader, val = build_toy(cfg, bn=False)
    single = train(cfg, method=method, loader=loader, val_dataset=val)
    ddp_net = toy_load_snapshot(out / "checkpoints" / "epoch-1.pth")
    for k, v in method.net.state_dict().items():
        torch.testing.assert_close(ddp_net.state_dict()[k], v, atol=1e-6, rtol=1e-5)

    # evaluation sharded over 2 processes == evaluation of the same network in one process
    conf_single = Evaluator(cfg, "cpu").run(ddp_net, val)["confusion"]
    np.testing.assert_array_equal(np.array(ddp["confusion"]), conf_single)
    np.testing.assert_array_equal(np.array(ddp["confusion"]), single["eval"]["confusion"])
    assert conf_single.sum() == sum(int((item["label"] < 3).sum()) for item in val.items)
    assert ddp["eval_main"]["miou"] == pytest.approx(ddp["miou"])
    assert (out / "checkpoints" / "eval_results.json").is_file()


@pytest.mark.slow
def test_two_process_run_with_batchnorm_evaluates_the_network_it_saves(tmp_path, toy_snapshot_io):
    # without SyncBN (CPU) every process keeps its own BN statistics; the evaluation during training,
    # the saved snapshot and eval.py must all see rank 0's
    out = tmp_path / "ddp_bn"
    ddp = _torchrun_toy(out, tmp_path / "ddp_bn.json", "--bn", "1")
    rank0, rank1 = (json.loads((tmp_path / f"ddp_bn.json.rank{r}").read_text()) for r in (0, 1))
    assert rank0 and rank0 == rank1
    val = build_toy(toy_config(tmp_path))[2]
    snapshot = toy_load_snapshot(out / "checkpoints" / "epoch-1.pth")
    conf_single = Evaluator(toy_config(tmp_path), "cpu").run(snapshot, val)["confusion"]
    np.testing.assert_array_equal(np.array(ddp["confusion"]), conf_single)
    assert ddp["eval_main"]["miou"] == pytest.approx(ddp["miou"])


@pytest.mark.slow
def test_sigterm_saves_latest_and_the_run_resumes(tmp_path, toy_snapshot_io):
    out, ready = tmp_path / "run", tmp_path / "ready"
    cmd = [sys.executable, TOY, "--out", str(out), "--epochs", "200", "--delay", "0.05",
           "--ready-file", str(ready)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "the training run did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output and "--resume auto" in output
    state = ckpt.load_training_state(out / "checkpoints" / "latest.pth")
    stopped = state["global_iter"]
    assert 1 <= stopped < 200 * 4
    assert (state["epoch"], state["iter_in_epoch"]) == divmod(stopped, 4)

    cfg = toy_config(out, epochs=200, max_iters=stopped + 2)
    method, loader, val = build_toy(cfg)
    res = train(cfg, method=method, loader=loader, val_dataset=val, resume="auto")
    assert res["status"] == "finished" and res["global_iter"] == stopped + 2
    assert f"resumed from {out / 'checkpoints' / 'latest.pth'}" in (out / "log.txt").read_text()


# a worker of two attempts: the first joins, reduces, and rank 1 fails; in the restart rank 0 comes late
RESTARTED_WORKER = """import os, sys, time
from pathlib import Path

import torch

from furnace.engine import dist

attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
if attempt == 1 and rank == 0:
    time.sleep(3)
dist.setup("cpu", timeout_s=20)
total = dist.all_reduce_sum(torch.ones(1)).item()
if attempt == 0:
    if rank == 1:
        os._exit(1)  # torchrun restarts the group
    time.sleep(120)  # stopped by torchrun
Path(sys.argv[1], f"attempt{attempt}.rank{rank}").write_text(str(total))
"""


@pytest.mark.slow
def test_a_restarted_group_joins_without_the_previous_attempts_leftovers(tmp_path):
    # torchrun's static rendezvous keeps its store across restarts: the restarted rank 1 must wait for the
    # new rank 0's address, not connect to the one the first attempt's rank 0 left there
    worker = tmp_path / "worker.py"
    worker.write_text(RESTARTED_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
           "--master_port", str(_free_port()), str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [(tmp_path / f"attempt1.rank{r}").read_text() for r in (0, 1)] == ["2.0", "2.0"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
