"""Training loop: learning, resume bit-identity, gradient accumulation, failure handling, LR, snapshots."""

import pytest
import torch

from engine_toy import build_toy, toy_config, toy_load_snapshot

from furnace.engine import checkpoint as ckpt
from furnace.engine import rng
from furnace.run import train
from furnace.engine.optim import build_optimizer, param_groups, poly_lr
from furnace.utils import UserError, safe_load


pytestmark = pytest.mark.usefixtures("toy_snapshot_io")  # conftest.py


def run(cfg, resume="", **toy):
    method, loader, val = build_toy(cfg, **toy)
    return train(cfg, method=method, loader=loader, val_dataset=val, resume=resume), method


def test_tiny_model_learns_colour_to_class_and_writes_the_run_directory(tmp_path):
    cfg = toy_config(tmp_path, epochs=3, snapshot_last=1, snapshot_every=2, tb_images_every=2, log_every=3)
    res, method = run(cfg, n_train=24)
    assert res["status"] == "finished" and res["global_iter"] == 18
    assert res["miou"] > 0.9
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.glob("epoch-*.pth")) == ["epoch-2.pth", "epoch-3.pth"]
    state = ckpt.load_training_state(ck / "latest.pth")
    assert (state["epoch"], state["iter_in_epoch"], state["global_iter"]) == (3, 0, 18)
    assert state["config"]["epochs"] == 3 and isinstance(state["config"], dict)
    final = toy_load_snapshot(ck / "epoch-3.pth")
    for k, v in final.state_dict().items():
        assert torch.equal(v, method.net.state_dict()[k])
    assert safe_load(ck / "epoch-3.pth")["iteration"] == 18
    log = (tmp_path / "log.txt").read_text()
    assert "config:" in log and '"lr": 0.1' in log and "mIoU" in log
    assert (tmp_path / "on_train_end.txt").is_file()
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb").glob("events*"))
    for tag in (b"train/loss_sup", b"train/lr", b"train/images_per_s", b"val/miou", b"val/iou/class_1",
                b"train/prediction_0"):
        assert tag in events


def _state(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


def test_resume_mid_epoch_and_at_epoch_end_is_bit_identical(tmp_path):
    toy = dict(dropout=0.2)  # dropout: the method draws from the global generator every step
    full, method_full = run(toy_config(tmp_path / "full", max_iters=7), **toy)
    assert full["global_iter"] == 7
    parts = tmp_path / "parts"
    for stop in (3, 4):  # 3: mid-epoch 1, 4: end of epoch 1
        r, _ = run(toy_config(parts, max_iters=stop), resume="auto", **toy)
        assert r["global_iter"] == stop
    last, method_parts = run(toy_config(parts, max_iters=7), resume="auto", **toy)
    assert last["global_iter"] == 7
    a, b = _state(method_full), _state(method_parts)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = ckpt.load_training_state(tmp_path / "full" / "checkpoints" / "latest.pth")
    sb = ckpt.load_training_state(parts / "checkpoints" / "latest.pth")
    for i, buf in sa["optimizer"]["state"].items():
        assert torch.equal(buf["momentum_buffer"], sb["optimizer"]["state"][i]["momentum_buffer"])
    assert "resumed from" in (parts / "log.txt").read_text()


def test_resume_from_a_missing_file_names_it(tmp_path):
    with pytest.raises(UserError, match="nope.pth"):
        run(toy_config(tmp_path), resume=str(tmp_path / "nope.pth"))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    common = dict(max_iters=1, weight_decay=0.0, amp="none")  # an fp32 identity: bf16 rounds a batch of 4 otherwise
    toy = dict(bn=False, ignore=False)
    _, whole = run(toy_config(tmp_path / "a", micro_batch=4, **common), **toy)
    _, accumulated = run(toy_config(tmp_path / "b", micro_batch=1, **common), **toy)
    a, b = _state(whole), _state(accumulated)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    fresh = build_toy(toy_config(tmp_path / "c"), **toy)[0].state_dict()
    assert not torch.allclose(a["net.classifier.weight"], fresh["net.classifier.weight"])  # it did move


def test_non_finite_loss_stops_naming_iteration_and_term_and_keeps_latest(tmp_path):
    cfg = toy_config(tmp_path, save_every_iters=1)
    with pytest.raises(UserError) as err:
        run(cfg, nan_at_call=3)
    msg = str(err.value)
    assert "iteration 3" in msg and "loss_aux=nan" in msg and "loss=nan" in msg and "loss_sup" not in msg
    assert f"error: {msg}" in (tmp_path / "log.txt").read_text()  # the run directory says why the run stopped
    state = ckpt.load_training_state(tmp_path / "checkpoints" / "latest.pth")
    assert state["global_iter"] == 2
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_interrupted_checkpoint_write_keeps_previous_latest_and_reports(tmp_path, monkeypatch):
    run(toy_config(tmp_path, max_iters=2))
    latest = tmp_path / "checkpoints" / "latest.pth"
    before = latest.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(UserError) as err:
        run(toy_config(tmp_path, max_iters=4, save_every_iters=1), resume="auto")
    assert str(latest) in str(err.value) and "No space left" in str(err.value)
    monkeypatch.undo()
    assert latest.read_bytes() == before
    assert ckpt.load_training_state(latest)["global_iter"] == 2
    assert [p.name for p in latest.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_run_killed_between_an_epochs_snapshot_and_latest_still_has_the_snapshot(tmp_path, monkeypatch):
    """Epoch 2's snapshot is written before epoch 2's latest.pth: a kill while latest.pth is written leaves the
    snapshot, and the resumed run (from epoch 1's latest.pth) writes it again, the same network."""
    from furnace.engine.trainer import _Loop

    cfg = toy_config(tmp_path, epochs=3, save_every_minutes=0, snapshot_every=1)
    real, calls = _Loop.save_latest, []

    def killed_at_the_second(self, state):
        calls.append(state.global_iter)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a SIGKILL: nothing after this point of the run happens
        real(self, state)

    monkeypatch.setattr(_Loop, "save_latest", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(_Loop, "save_latest", real)
    ck = tmp_path / "checkpoints"
    first = toy_load_snapshot(ck / "epoch-2.pth").state_dict()
    assert ckpt.load_training_state(ck / "latest.pth")["epoch"] == 1
    res, _ = run(cfg, resume="auto")
    assert res["status"] == "finished" and sorted(p.name for p in ck.glob("epoch-*.pth")) == [
        "epoch-1.pth", "epoch-2.pth", "epoch-3.pth"]
    again = toy_load_snapshot(ck / "epoch-2.pth").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_snapshot_of_an_early_stop_is_replaced_by_its_epochs_end(tmp_path):
    """max_iters=2 stops in epoch 1 and keeps that network as epoch-1.pth; the resumed run, which keeps only the
    last snapshot, writes the end of epoch 1 over it rather than leaving a mid-epoch network under that name."""
    run(toy_config(tmp_path, max_iters=2))
    ck = tmp_path / "checkpoints"
    assert safe_load(ck / "epoch-1.pth")["iteration"] == 2
    res, _ = run(toy_config(tmp_path), resume="auto")
    assert res["global_iter"] == 8 and safe_load(ck / "epoch-1.pth")["iteration"] == 4
    assert sorted(p.name for p in ck.glob("epoch-*.pth")) == ["epoch-1.pth", "epoch-2.pth"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    state = rng.get_rng_state()
    from furnace.utils import atomic_save

    atomic_save({"rng": [state]}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    rng.set_rng_state(safe_load(tmp_path / "rng.pth")["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_poly_schedule_with_warmup():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100) > 0
    assert poly_lr(0.01, 0, 100, warmup_iters=10) == pytest.approx(0.001)
    assert poly_lr(0.01, 9, 100, warmup_iters=10) == pytest.approx(0.01 * 0.91 ** 0.9)
    assert poly_lr(0.01, 10, 100, warmup_iters=10) == pytest.approx(0.01 * 0.9 ** 0.9)


def test_no_weight_decay_on_biases_and_norm_parameters(tmp_path):
    from engine_toy import ToyNet

    net = ToyNet(bn=True)
    groups = param_groups(net, 4e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 4e-4 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(net.conv1.weight), id(net.classifier.weight)}
    opt = build_optimizer(net, toy_config(tmp_path, momentum=0.9))
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)


def test_snapshot_rule_keeps_last_every_nth_and_final():
    kept = [e for e in range(1, 35) if ckpt.keep_snapshot(e, 34, 14, 0)]
    assert kept == list(range(21, 35))
    kept = [e for e in range(1, 35) if ckpt.keep_snapshot(e, 34, 2, 10)]
    assert kept == [10, 20, 30, 33, 34]
    assert [e for e in range(1, 6) if ckpt.keep_snapshot(e, 5, 0, 0)] == [5]


def test_stop_request_ignores_quick_repeats_and_aborts_on_a_later_one(monkeypatch):
    import os
    import signal
    import time

    from furnace.engine.dist import StopRequest

    monkeypatch.setattr(StopRequest, "ABORT_AFTER_S", 0.2)
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(announce=False) as stop:
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):  # Ctrl-C under torchrun: 2 x SIGINT (+ TERM)
            os.kill(os.getpid(), sig)
            time.sleep(0.02)
        assert stop.requested and stop.signum == signal.SIGINT
        time.sleep(0.25)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_budget_in_iterations_sets_the_schedule_and_the_epochs_it_takes(tmp_path):
    cfg = toy_config(tmp_path, train_iters=6, epochs=0, log_every=1)  # 4 iterations per epoch
    res, _ = run(cfg)
    assert res["status"] == "finished" and res["global_iter"] == res["total_iters"] == 6
    log = (tmp_path / "log.txt").read_text()
    assert "4 iterations/epoch x train_iters 6 (2 epochs) iterations" in log
    assert f"epoch 2/2 it 6/6 lr {poly_lr(0.1, 5, 6):.3e}" in log  # the schedule spans the 6 iterations
    assert (tmp_path / "checkpoints" / "epoch-2.pth").is_file() and not (tmp_path / "checkpoints" / "epoch-3.pth").exists()


def test_save_every_minutes_refreshes_latest_without_changing_the_run(tmp_path, monkeypatch):
    saved = []
    write = ckpt.save_training_state
    monkeypatch.setattr(ckpt, "save_training_state", lambda path, **kw: (saved.append(kw["global_iter"]),
                                                                          write(path, **kw)))
    # 2 epochs of 4 iterations: by epoch only, then with a save due at every iteration (any time has passed)
    _, by_epoch = run(toy_config(tmp_path / "a", save_every_minutes=0), dropout=0.2)
    assert saved == [4, 8]
    saved.clear()
    _, by_time = run(toy_config(tmp_path / "b", save_every_minutes=1e-9), dropout=0.2)
    assert saved == [1, 2, 3, 4, 5, 6, 7, 8]
    a, b = _state(by_epoch), _state(by_time)
    assert all(torch.equal(a[k], b[k]) for k in a)  # saving draws nothing and changes nothing


def test_save_and_timeout_settings_are_checked(tmp_path):
    with pytest.raises(UserError, match="save_every_minutes=-1.0 .* must not be negative"):
        toy_config(tmp_path, save_every_minutes=-1.0)
    with pytest.raises(UserError, match="dist_timeout_s=0 must be positive"):
        toy_config(tmp_path, dist_timeout_s=0)


@pytest.mark.parametrize("minutes,saves", [(5.0, 1), (0.0, 3)])
def test_latest_is_written_by_the_time_rule_not_at_every_short_epoch(tmp_path, monkeypatch, minutes, saves):
    written = []
    real = ckpt.save_training_state
    monkeypatch.setattr(ckpt, "save_training_state", lambda path, **kw: (written.append(kw["global_iter"]),
                                                                          real(path, **kw)))
    res, _ = run(toy_config(tmp_path, epochs=3, save_every_minutes=minutes))  # 4 iterations per epoch
    assert res["global_iter"] == 12 and written == ([12] if saves == 1 else [4, 8, 12])
