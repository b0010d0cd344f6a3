"""Reliability end to end: bad data, bad config or command line, interruptions, untrusted files, full disk.

Every test goes through a real entry point — an experiment's ``train.py`` / ``eval.py`` (``train_main`` /
``eval_main``, in this process or as a real subprocess / torchrun), the dataset check, the model loaders
or the ``convert_official`` command — on a tiny synthetic dataset (24 train / 8 val images of 32 px)
with tiny networks. Each test asserts the message the user sees AND that nothing written earlier was
lost. ``docs/failures.md`` lists the same failures with what to do.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from furnace import utils as furnace_utils
from furnace.config import synthetic_config
from furnace.datasets import check_dataset
from furnace.datasets.make_synthetic import generate
from furnace.engine import checkpoint as ckpt
from furnace.run import eval_main, train_main
from furnace.models import build_model, load_imagenet_weights, load_segmentor, save_segmentor
from furnace.tools import convert_official as convert_tool
from furnace.utils import UserError, safe_load

REPO = Path(__file__).resolve().parents[1]
# The experiment every test runs: tiny networks, 32 px crops, 1 epoch of 5 iterations (1/8 labeled).
TINY = {"method": "supervised", "arch": "resnet18", "labeled_ratio": 8, "width_mult": 0.125, "head_channels": 16,
        "crop_size": 32, "eval_crop": 32, "eval_batch": 4, "global_batch": 4, "epochs": 1, "num_workers": 0,
        "device": "cpu", "log_every": 1, "snapshot_last": 1, "seed": 3}
CONFIG_PY = f"""from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.update({TINY!r})
"""
TRAIN_PY = """from config import config
from furnace.run import train_main

if __name__ == "__main__":
    train_main(config)
"""


def tiny_config(data_root, output_dir, **overrides):
    """The experiment's config as its config.py builds it, pointed at ``data_root`` / ``output_dir``."""
    C = synthetic_config()
    C.update(TINY)
    C.update(data_root=str(data_root), output_dir=str(output_dir), **overrides)
    return C


def sub_env(data_root=None, output_dir=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if data_root:
        env["DATA_ROOT"] = str(data_root)
    if output_dir:
        env["OUTPUT_DIR"] = str(output_dir)
    return env


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A good DATA/ folder (synthetic, partitions 1/16..1/2), an earlier run of the experiment in
    it (latest.pth after 2 iterations + epoch-1.pth) and the experiment folder itself."""
    base = tmp_path_factory.mktemp("pristine")
    data = base / "DATA"
    generate(data / "synthetic", seed=0, num_train=24, num_val=8, size=32, ratios=(16, 8, 4, 2))
    run = base / "run"
    train_main(tiny_config(data, run), ["max_iters=2"])
    exp = base / "exp"
    exp.mkdir()
    (exp / "config.py").write_text(CONFIG_PY)
    (exp / "train.py").write_text(TRAIN_PY)
    return {"data": data, "run": run, "exp": exp}


@pytest.fixture
def workspace(tmp_path, pristine):
    """This test's own copies of DATA/ and of the earlier run (its checkpoints fingerprinted)."""
    data, out = tmp_path / "DATA", tmp_path / "out"
    shutil.copytree(pristine["data"], data)
    shutil.copytree(pristine["run"], out)
    return data, out, fingerprint(out)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Tiny teacher files: the deep and wide teachers of the 7 synthetic classes, and a deep one of 4."""
    base = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name, arch, classes in (("deep", "resnet101", 7), ("wide", "wrn50_2", 7), ("deep4", "resnet101", 4)):
        net = build_model(arch, classes, width_mult=0.125, head_channels=16, verbose=False)
        paths[name] = base / f"{name}.pth"
        save_segmentor(net, paths[name])
    return paths


def fingerprint(out) -> dict:
    return {p.name: p.read_bytes() for p in (Path(out) / "checkpoints").glob("*.pth")}


def assert_kept(out, before: dict) -> None:
    """Every checkpoint of ``before`` is still there, byte for byte, and loads; no partial file remains."""
    ck = Path(out) / "checkpoints"
    for name, data in before.items():
        assert (ck / name).read_bytes() == data, f"{name} changed"
    if "latest.pth" in before:
        assert ckpt.load_training_state(ck / "latest.pth")["global_iter"] == 2
    for name in before:
        if name.startswith("epoch-"):
            load_segmentor(ck / name)
    assert not list(ck.glob("*.tmp")), "a partial temporary file was left behind"


def expect_exit_2(capsys, fn, *args, **kwargs) -> str:
    """Run an entry point that must fail: status 2, ``error: ...`` on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        fn(*args, **kwargs)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    err = without_progress_bar(err)
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def without_progress_bar(text: str) -> str:
    """``text`` without the tqdm bar's lines (redrawn with carriage returns while training runs)."""
    return "".join(line for line in text.splitlines(keepends=True) if "\r" not in line and "%|" not in line)


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, f"not a single line:\n{err}"
    return err


# ----------------------------------------------------------------------------- 1. bad data


def _labeled_id(data, index=1):
    return (data / "synthetic/subset_train_aug/train_aug_labeled_1-8.txt").read_text().split()[index]


def _write_label(path, array):
    assert cv2.imwrite(str(path), array)


def corrupt(data, kind):
    """Break the dataset in ``data`` one way; returns (file that is named, regex of the problem)."""
    syn = data / "synthetic"
    name = _labeled_id(data)
    image, label = syn / f"train_aug/image/{name}.jpg", syn / f"train_aug/label/{name}.png"
    labeled_list = syn / "subset_train_aug/train_aug_labeled_1-8.txt"
    if kind == "missing image":
        image.unlink()
        return image, "image file not found"
    if kind == "missing label":
        label.unlink()
        return label, "label file not found"
    if kind == "truncated image":
        image.write_bytes(image.read_bytes()[:300])
        return image, "truncated"
    if kind == "label value":
        _write_label(label, np.full((32, 32), 9, np.uint8))
        return label, r"label values \{9\} are outside the 7 classes"
    if kind == "size mismatch":
        _write_label(label, np.zeros((30, 32), np.uint8))
        return label, "they must have the same size"
    if kind == "empty split":
        labeled_list.write_text("\n")
        return labeled_list, "split list is empty"
    if kind == "wrong list format":
        labeled_list.write_text(f"/train_aug/image/{name}.jpg\t/train_aug/label/{name}.png\n")
        return labeled_list, r":1: expected one bare id per line"
    if kind == "RGB label":
        _write_label(label, np.zeros((32, 32, 3), np.uint8))
        return label, "RGB PNG"
    if kind == "palette label":  # read as its indices, which are checked like any label's
        img = Image.fromarray(np.full((32, 32), 9, np.uint8), mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0] * 128)
        img.save(label)
        return label, r"label values \{9\} are outside the 7 classes"
    raise AssertionError(kind)


BAD_DATA = ["missing image", "missing label", "truncated image", "label value", "size mismatch", "empty split",
            "wrong list format", "RGB label", "palette label"]


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_is_named_before_training_starts_or_when_the_file_is_read(workspace, capsys, kind):
    data, out, before = workspace
    path, problem = corrupt(data, kind)
    cfg = tiny_config(data, out)
    log_before = (out / "log.txt").read_text()

    # the fast check at the start of training sees it: nothing runs, nothing is written
    err = expect_exit_2(capsys, train_main, cfg, ["--resume", "auto"])
    assert err.startswith("error: dataset check failed") and str(path) in err and re.search(problem, err), err
    assert (out / "log.txt").read_text() == log_before
    assert_kept(out, before)

    # without the check the same problem stops training when the file is read — in a loader
    # worker process, yet one line naming the file, not a worker traceback
    err = one_line(expect_exit_2(capsys, train_main, cfg, ["--resume", "auto", "check_data=false", "num_workers=1"]))
    assert str(path) in err and re.search(problem, err), err
    assert_kept(out, before)


def test_bad_file_the_fast_check_cannot_see_stops_training_when_read_and_keeps_earlier_checkpoints(
        tmp_path, pristine, capsys):
    data, out = tmp_path / "DATA", tmp_path / "out"
    shutil.copytree(pristine["data"], data)
    # 1/2 labeled: 12 labeled images, of which the fast check reads only a sample
    cfg = tiny_config(data, out, labeled_ratio=2, save_every_iters=1, num_workers=1)
    ids = (data / "synthetic/subset_train_aug/train_aug_labeled_1-2.txt").read_text().split()
    from furnace.datasets import TrainLoader

    order = TrainLoader(cfg).orders(0)[0]  # labeled index at each sample position of epoch 0
    for index in sorted(range(len(ids)), key=lambda i: -int(np.flatnonzero(order == i)[0])):
        label = data / f"synthetic/train_aug/label/{ids[index]}.png"
        good = label.read_bytes()
        _write_label(label, np.full((32, 32), 200, np.uint8))
        try:
            check_dataset(cfg)
            break  # unseen by the fast check: read last in the epoch, so checkpoints exist by then
        except UserError:
            label.write_bytes(good)
    else:
        pytest.fail("the fast check read every labeled sample")
    first_read = int(np.flatnonzero(order == index)[0]) // cfg.global_batch + 1
    assert first_read >= 2

    err = one_line(expect_exit_2(capsys, train_main, cfg, []))
    assert str(label) in err and "label values {200} are outside the 7 classes" in err
    state = ckpt.load_training_state(out / "checkpoints" / "latest.pth")
    assert state["global_iter"] == first_read - 1  # the iterations before the bad file are kept


def test_bad_val_file_found_at_evaluation_is_named_and_the_trained_checkpoints_are_kept(tmp_path, pristine, capsys):
    data, out = tmp_path / "DATA", tmp_path / "out"
    shutil.copytree(pristine["data"], data)
    bad = data / "synthetic/val/label/val_00005.png"
    bad.write_bytes(b"not a png")
    cfg = tiny_config(data, out, check_data=False, num_workers=1, max_iters=1)
    err = one_line(expect_exit_2(capsys, train_main, cfg, []))
    assert err == f"error: {bad}: label is not a PNG file; labels must be single-channel 8-bit index PNGs\n"
    assert ckpt.load_training_state(out / "checkpoints" / "latest.pth")["global_iter"] == 1
    load_segmentor(out / "checkpoints" / "epoch-1.pth")


# ----------------------------------------------------------------------------- 2. bad config / command line


def _case_config(case, data, out, teachers, monkeypatch):
    """(config, argv, strings the one-line error must hold) of a bad-config case."""
    cfg = tiny_config(data, out)
    mgd = ["method=mgd", f"teacher_deep={teachers['deep']}", f"teacher_wide={teachers['wide']}"]
    if case == "unknown key on the command line":
        return cfg, ["lambda_imgae=0.1"], ["unknown key 'lambda_imgae'", "did you mean lambda_image"]
    if case == "unknown key in config.py":
        cfg.lr_powr = 0.9
        return cfg, [], ["unknown key 'lr_powr'", "did you mean lr_power"]
    if case == "wrong type":
        return cfg, ["lr=fast"], ["lr='fast' is not a number"]
    if case == "wrong list elements":
        return cfg, ["eval_scales=['a']"], ["eval_scales=\"['a']\" is not a list of numbers"]
    if case == "wrong dict values":
        return cfg, ["epochs_per_ratio={8: 2.7}"], ["epochs_per_ratio='{8: 2.7}' is not a dict of whole numbers"]
    if case == "no train scales":
        return cfg, ["train_scales=[]"], ["train_scales=[] must be a non-empty list of positive numbers"]
    if case == "wrong choice":
        return cfg, ["arch=resnet19"], ["arch='resnet19' is not one of", "resnet18"]
    if case == "missing teacher file":
        missing = out / "nope.pth"
        return cfg, mgd + [f"teacher_deep={missing}"], [f"teacher_deep='{missing}'", "teacher file not found",
                                                        "convert_official"]
    if case == "teacher of another architecture":
        return cfg, mgd + [f"teacher_deep={teachers['wide']}"], [str(teachers["wide"]), "holds a wrn50_2",
                                                                  "teacher_deep_arch='resnet101'"]
    if case == "teacher of another class count":
        return cfg, mgd + [f"teacher_deep={teachers['deep4']}"], [str(teachers["deep4"]), "with 4 classes",
                                                                   "num_classes=7"]
    if case == "labeled_ratio without split lists":
        lst = data / "synthetic/subset_train_aug/train_aug_labeled_1-32.txt"
        return cfg, ["labeled_ratio=32"], [str(lst), "not found", "furnace.datasets.make_splits",
                                           "--ratios 32", "1/16, 1/8, 1/4, 1/2"]
    if case == "labeled_ratio without an epoch count":
        return cfg, ["labeled_ratio=32", "epochs=0"], ["labeled_ratio=32 has no entry in epochs_per_ratio",
                                                       "set epochs=<N>"]
    if case == "global batch over the processes":
        # as under torchrun with 2 processes: the error comes before joining the process group
        monkeypatch.setenv("WORLD_SIZE", "2")
        return cfg, ["global_batch=5"], ["global_batch=5 cannot be split over 2 processes"]
    if case == "ImageNet file that is no state dict":
        torch.save([1, 2, 3], out / "list.pth")
        return cfg, [f"pretrained={out / 'list.pth'}"], [str(out / "list.pth"), "holds no state dict"]
    if case == "data short of a global batch":
        return cfg, ["global_batch=32"], ["3 labeled and 21 unlabeled samples make no full global batch of 32"]
    if case == "not KEY=VALUE":
        return cfg, ["lr"], ["'lr' is not KEY=VALUE"]
    raise AssertionError(case)


BAD_CONFIG = ["unknown key on the command line", "unknown key in config.py", "wrong type", "wrong list elements",
              "wrong dict values", "no train scales", "wrong choice",
              "missing teacher file", "teacher of another architecture", "teacher of another class count",
              "labeled_ratio without split lists", "labeled_ratio without an epoch count", "global batch over the processes", "not KEY=VALUE",
              "ImageNet file that is no state dict", "data short of a global batch"]


@pytest.mark.parametrize("check", [False, True], ids=["train", "--check"])
@pytest.mark.parametrize("case", BAD_CONFIG)
def test_bad_config_is_one_error_line_naming_the_key_or_file(workspace, teachers, capsys, monkeypatch, case, check):
    """Training stops on each before any work; `train.py --check` (what script.sh runs first) finds each too."""
    data, out, before = workspace
    cfg, argv, expected = _case_config(case, data, out, teachers, monkeypatch)
    err = one_line(expect_exit_2(capsys, train_main, cfg, ["--resume", "auto", *(["--check"] * check), *argv]))
    for text in expected:
        assert text in err, err
    (out / "list.pth").unlink(missing_ok=True)
    assert_kept(out, before)


@pytest.mark.slow
def test_train_py_reports_bad_config_on_stderr_with_status_2(workspace, pristine):
    data, out, before = workspace
    for argv, expected in ((["lrr=0.1"], "did you mean lr"), (["labeled_ratio=32"], "make_splits")):
        proc = subprocess.run([sys.executable, "train.py", "--resume", "auto", *argv], cwd=pristine["exp"],
                              env=sub_env(data, out), capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and expected in proc.stderr
        assert proc.stdout == ""
    assert_kept(out, before)


@pytest.mark.slow
def test_torchrun_global_batch_that_cannot_be_divided(workspace, pristine):
    data, out, before = workspace
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--resume", "auto", "global_batch=5"]
    proc = subprocess.run(cmd, cwd=pristine["exp"], env=sub_env(data, out), capture_output=True, text=True,
                          timeout=180, check=False)
    # each process prints the one line and exits 2 (torchrun then adds its own failure report)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    expected = ("error: config: global_batch=5 cannot be split over 2 processes; use a multiple of 2 or another "
                "process count")
    assert lines == [expected, expected], proc.stderr[-3000:]
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr
    assert_kept(out, before)


# ----------------------------------------------------------------------------- 3. interruptions


def test_non_finite_loss_stops_naming_iteration_and_term_and_keeps_the_last_good_checkpoint(workspace, capsys):
    data, out, _ = workspace
    shutil.rmtree(out)
    cfg = tiny_config(data, out, lr=1e30, save_every_iters=1)  # the first step blows the weights up
    err = one_line(expect_exit_2(capsys, train_main, cfg, []))
    m = re.search(r"iteration (\d+) \(epoch 1\): non-finite loss loss=(nan|inf), sup=(nan|inf)", err)
    assert m, err
    failed = int(m.group(1))
    assert failed >= 2 and f"keeps the state after iteration {failed - 1}" in err and "--resume auto" in err
    state = ckpt.load_training_state(out / "checkpoints" / "latest.pth")
    assert state["global_iter"] == failed - 1
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def _wait_for(predicate, proc, timeout=120.0, what="the run"):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"{what} ended early:\n" + proc.stdout.read()[-3000:])
        assert time.time() < deadline, f"{what} did not get going"
        time.sleep(0.05)


def _iterations_logged(out, n):
    log = Path(out) / "log.txt"
    return lambda: log.is_file() and f" it {n}/" in log.read_text()


def _launch(cmd, cwd, env):
    # own session: signals go to the whole process group, as from a terminal or a scheduler
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_sigterm_under_torchrun_saves_once_and_both_processes_exit(tmp_path, pristine, capsys):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "epochs=400"]
    proc = _launch(cmd, pristine["exp"], sub_env(pristine["data"], out))
    try:
        _wait_for(_iterations_logged(out, 3), proc, what="torchrun")
        proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both processes
        output, _ = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    m = re.search(r"interrupted by SIGTERM after iteration (\d+); state saved to (\S+)\.", output)
    assert m, output[-3000:]
    assert output.count("received SIGTERM") == 1 and output.count("interrupted by SIGTERM") == 1  # rank 0 speaks
    stopped, latest = int(m.group(1)), Path(m.group(2))
    assert latest == out / "checkpoints" / "latest.pth"
    state = ckpt.load_training_state(latest)
    assert state["global_iter"] == stopped >= 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert [p.name for p in latest.parent.iterdir()] == ["latest.pth"]  # rank 0 wrote it, once, completely

    # a single process continues the 2-process run
    res = train_main(tiny_config(pristine["data"], out, epochs=400), ["--resume", "auto", f"max_iters={stopped + 1}"])
    assert res["status"] == "finished" and res["global_iter"] == stopped + 1
    assert "was written by 2 process(es), this run has 1" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_with_loader_workers_saves_and_exits_130(tmp_path, pristine):
    out = tmp_path / "run"
    proc = _launch([sys.executable, "train.py", "epochs=400", "num_workers=1"], pristine["exp"],
                   sub_env(pristine["data"], out))
    try:
        _wait_for(_iterations_logged(out, 2), proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the loader worker too
        output, _ = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output and "--resume auto" in output
    state = ckpt.load_training_state(out / "checkpoints" / "latest.pth")
    assert state["global_iter"] >= 2


@pytest.mark.slow
def test_kill_9_while_saving_leaves_the_last_complete_checkpoint_loadable(tmp_path, pristine, capsys):
    out = tmp_path / "run"
    ck = out / "checkpoints"
    proc = _launch([sys.executable, "train.py", "epochs=400", "save_every_iters=1"], pristine["exp"],
                   sub_env(pristine["data"], out))
    try:
        _wait_for(lambda: (ck / "latest.pth").is_file(), proc)
        # kill -9 the moment a save is under way (a temporary file exists), or after 5 s whatever it does
        deadline = time.time() + 5
        while time.time() < deadline and not any(n.endswith(".tmp") for n in os.listdir(ck)):
            time.sleep(0.0005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    partial = list(ck.glob(".latest.pth.*.tmp"))
    state = safe_load(ck / "latest.pth")  # weights_only load of the last complete file
    assert state["format"] == "mgd-ssss.train-state" and state["global_iter"] >= 1
    done = state["global_iter"]

    res = train_main(tiny_config(pristine["data"], out, epochs=400), ["--resume", "auto", f"max_iters={done + 1}"])
    assert res["status"] == "finished" and res["global_iter"] == done + 1
    log = (out / "log.txt").read_text()
    assert f"resumed from {ck / 'latest.pth'}: epoch {state['epoch'] + 1}, iteration {done}" in log
    if partial:  # killed mid-write: the partial file is not a checkpoint and the next run removes it
        assert "removed 1 partial file(s) an interrupted save left" in log
    assert not list(ck.glob("*.tmp"))


# ----------------------------------------------------------------------------- 4. untrusted files


class _RunsCode:
    """Unpickling this calls exec(), which creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture
def crafted(tmp_path):
    """A segmentor-looking file whose unpickling runs code, in torch's zip format (and its marker)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.pth"
    torch.save({"format": "mgd-ssss.segmentor", "version": 1, "state_dict": _RunsCode(marker)}, path)
    return path, marker


def _refused(err: str, path) -> None:
    assert f"{path}: cannot be loaded safely (UnpicklingError: Unsupported global: GLOBAL exec" in err, err
    assert "furnace never unpickles arbitrary objects" in err and "weights_only=False" not in err, err


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain pickle"])
def test_crafted_file_in_any_format_is_refused_by_load_segmentor_without_running(tmp_path, fmt):
    marker, path = tmp_path / "code-ran", tmp_path / "crafted.pth"
    obj = {"format": "mgd-ssss.segmentor", "state_dict": _RunsCode(marker)}
    if fmt == "plain pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(UserError) as err:
        load_segmentor(path)
    _refused(str(err.value), path)
    assert not marker.exists()


ENTRY_POINTS = ["load_imagenet_weights", "pretrained in a config", "teacher in build_method", "--resume PATH",
                "convert_official", "eval.py -e PATH"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_crafted_file_is_refused_by_every_entry_point_without_running(workspace, teachers, crafted, capsys, entry):
    data, out, before = workspace
    path, marker = crafted
    cfg = tiny_config(data, out)
    if entry == "load_imagenet_weights":
        with pytest.raises(UserError) as exc:
            load_imagenet_weights(build_model("resnet18", 7, width_mult=0.125, head_channels=16), path)
        err = str(exc.value)
    elif entry == "pretrained in a config":
        err = one_line(expect_exit_2(capsys, train_main, cfg, [f"pretrained={path}"]))
    elif entry == "teacher in build_method":
        err = one_line(expect_exit_2(capsys, train_main, cfg, [
            "--resume", "auto", "method=mgd", f"teacher_deep={path}", f"teacher_wide={teachers['wide']}"]))
    elif entry == "--resume PATH":
        err = one_line(expect_exit_2(capsys, train_main, cfg, ["--resume", str(path)]))
    elif entry == "convert_official":
        dst = out / "converted.pth"
        capsys.readouterr()
        assert convert_tool.main([str(path), str(dst), "--arch", "resnet18"]) == 2
        err = one_line(capsys.readouterr().err)
        assert not dst.exists()
    elif entry == "eval.py -e PATH":
        err = one_line(expect_exit_2(capsys, eval_main, cfg, ["-e", str(path)]))
    else:
        raise AssertionError(entry)
    _refused(err, path)
    assert not marker.exists(), "unpickling ran code"
    assert_kept(out, before)
    # the file is live: an unsafe load would have run it
    torch.load(path, weights_only=False)  # unsafe-load on purpose: proves the payload is live
    assert marker.exists()


def _call_args(text: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_paren + 1:i]
    return text[open_paren + 1:]


def test_every_torch_load_in_the_repository_is_weights_only():
    offenders, seen = [], 0
    for top in ["furnace", "tests", *sorted(p.name for p in REPO.glob("exp.*"))]:
        for path in sorted((REPO / top).rglob("*.py")):
            text = path.read_text(encoding="utf-8", errors="replace")
            for m in re.finditer(r"\btorch\.load\(", text):
                line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end())]
                if "# unsafe-load on purpose" in line:
                    continue
                seen += 1
                if not re.search(r"\bweights_only\s*=\s*True\b", _call_args(text, m.end() - 1)):
                    offenders.append(f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert seen >= 1, "the scan found no torch.load at all: is it looking in the right place?"
    assert not offenders, f"torch.load without weights_only=True (use furnace.utils.safe_load): {offenders}"


# ----------------------------------------------------------------------------- 5. disk full


class _FillingFile:
    """A checkpoint file on a disk that fills up: ``limit`` bytes are written, then ENOSPC."""

    def __init__(self, file, limit):
        self.file, self.limit, self.written = file, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


class _DiskFillsFor:
    """Stand-in for the ``os`` module of furnace.utils: writes of temporary files whose name starts
    with ``prefix`` (``.latest.pth.`` / ``.epoch-``) run out of space after some bytes."""

    def __init__(self, prefix, limit=4096):
        self.prefix, self.limit, self.failed = prefix, limit, []

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        file = os.fdopen(fd, *args, **kwargs)
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(self.prefix):
            self.failed.append(name)
            return _FillingFile(file, self.limit)
        return file


class _FolderIsReadOnly:
    """Stand-in for ``tempfile.mkstemp``: the temporary file of a checkpoint whose name starts with ``prefix``
    cannot be created (a read-only folder; tests run as root, which chmod does not stop)."""

    def __init__(self, prefix):
        self.prefix, self.failed, self.mkstemp = prefix, [], furnace_utils.tempfile.mkstemp

    def __call__(self, *args, prefix=None, **kwargs):
        if prefix and prefix.startswith(self.prefix):
            self.failed.append(prefix)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return self.mkstemp(*args, prefix=prefix, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(pristine, tmp_path_factory):
    """The network at the end of the experiment (one epoch) run in one go."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train_main(tiny_config(pristine["data"], out), [])
    return ckpt.load_training_state(out / "checkpoints" / "latest.pth")["method"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file a write goes to")
@pytest.mark.parametrize("failure", ["full disk", "read-only folder"])
@pytest.mark.parametrize("which", ["latest", "snapshot"])
def test_failed_checkpoint_write_keeps_the_previous_file_names_it_and_resume_ends_the_same(
        workspace, uninterrupted, capsys, monkeypatch, which, failure):
    data, out, before = workspace
    ck = out / "checkpoints"
    prefix = ".latest.pth." if which == "latest" else ".epoch-"
    if failure == "full disk":
        disk = _DiskFillsFor(prefix)
        monkeypatch.setattr(furnace_utils, "os", disk)
    else:
        disk = _FolderIsReadOnly(prefix)
        monkeypatch.setattr(furnace_utils.tempfile, "mkstemp", disk)
    # latest: iteration 3 saves latest.pth (save_every_iters=1); snapshot: the epoch end saves epoch-1.pth, which
    # fails, and then would save latest.pth
    argv = ["--resume", "auto"] + (["max_iters=3", "save_every_iters=1"] if which == "latest" else [])
    err = one_line(expect_exit_2(capsys, train_main, tiny_config(data, out), argv))
    monkeypatch.undo()
    assert disk.failed, "no write was made to fail"
    target = ck / ("latest.pth" if which == "latest" else "epoch-1.pth")
    cause = "[Errno 28] No space left on device" if failure == "full disk" else "[Errno 30] Read-only file system"
    assert err.startswith(f"error: {target}: writing the ") and cause in err, err
    assert "unchanged" in err and "--resume auto" in err
    assert_kept(out, before)  # with the snapshot's failure latest.pth too: the resume redoes the epoch's end

    # once the disk has room again, --resume auto ends with the network of a run that never failed
    result = train_main(tiny_config(data, out), ["--resume", "auto"])
    assert result["status"] == "finished" and result["global_iter"] == 5
    final = ckpt.load_training_state(ck / "latest.pth")["method"]
    assert all(torch.equal(final[k], uninterrupted[k]) for k in uninterrupted)
    load_segmentor(ck / "epoch-1.pth")


@pytest.mark.timeout(120, method="thread")  # before the fix a dead TensorBoard writer thread blocked training forever
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_full_disk_while_logging_turns_the_logs_off_and_training_goes_on(workspace, capsys, monkeypatch):
    import tensorboardX.event_file_writer as tb_writer

    from furnace.engine import logger as logger_module

    data, out, _ = workspace

    first_event = tb_writer.EventsWriter.write_event

    def no_space(writer, event):  # the writer's opening event (written by its constructor) fits, nothing after
        if not getattr(writer, "wrote_one", False):
            writer.wrote_one = True
            return first_event(writer, event)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    room = (out / "log.txt").stat().st_size  # the earlier 2-iteration run's log fits, this 10-iteration one not

    def filling_open(path, *args, **kwargs):
        return _FillingFile(open(path, *args, **kwargs), limit=room)

    monkeypatch.setattr(tb_writer.EventsWriter, "write_event", no_space)
    monkeypatch.setattr(logger_module, "open", filling_open, raising=False)
    # 2 epochs of 5 iterations, a log line (3 scalars) every iteration and 9 scalars per evaluation:
    # more events than the writer's queue holds
    result = train_main(tiny_config(data, out / "again"), ["epochs=2"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "training goes on" in warnings[0], err
    assert warnings[0].startswith(f"warning: {out / 'again' / 'log.txt'}: writing the log failed (OSError: "
                                  "[Errno 28] No space left on device)"), warnings
    state = ckpt.load_training_state(out / "again" / "checkpoints" / "latest.pth")
    assert state["global_iter"] == 10 and result["status"] == "finished" and 0 < result["miou"] <= 1
    assert 0 < (out / "again" / "log.txt").stat().st_size <= room
