"""The one training loop, for any method (supervised, CPS, MGD): the loop knows nothing about them.

A method is an ``nn.Module`` whose parameters are exactly the trained networks; ``method(batch)``
returns a dict of scalar losses whose ``"loss"`` is the total. One optimizer iteration consumes
``accum = global_batch / world_size / micro_batch`` micro-batches on every process; each micro-batch
loss is scaled by ``1/accum`` and DDP averages over processes, so an iteration applies the gradient of
the mean over the global batch whatever the number of processes.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from torch import nn

from ..config import accumulation_steps, config_to_dict, resolve_config, validate_config
from ..datasets.device import to_device
from ..utils import UserError
from . import checkpoint as ckpt
from . import dist
from .evaluator import Evaluator, dataset_meta
from .logger import TrainLogger
from .optim import build_optimizer, poly_lr, set_lr

# config keys whose change on resume is routine (not worth a note in the log)
_ROUTINE_KEYS = {"max_iters", "output_dir", "data_root", "num_workers", "log_every", "tb_images_every",
                 "save_every_iters", "device", "check_data", "eval_every_epochs", "exp_name"}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequest:
    """SIGTERM / SIGINT handler for the duration of a ``with`` block.

    The first signal only sets ``requested``: the loop finishes the current iteration, saves and exits.
    The same signal again, a second or more later, aborts at once (KeyboardInterrupt). Other repeats
    are ignored: Ctrl-C on ``torchrun`` reaches each worker twice (from the terminal and forwarded by
    torchrun), and that must not skip the save.
    """

    ABORT_AFTER_S = 1.0

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True):
        self._pid = os.getpid()
        self.requested = False
        self.signum = 0
        self._first_at = 0.0
        self.announce = announce
        self._previous = {}

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            return  # a forked data-loading worker inherited the handler: the main process decides
        if self.requested:
            if signum == self.signum and time.monotonic() - self._first_at >= self.ABORT_AFTER_S:
                raise KeyboardInterrupt
            return
        self.requested, self.signum, self._first_at = True, signum, time.monotonic()
        if self.announce:
            sys.stderr.write(f"\nreceived {signal.Signals(signum).name}: finishing the current iteration, then "
                             "saving checkpoints/latest.pth (send it again to abort without saving)\n")
            sys.stderr.flush()

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def _load_state(path, method, optimizer, scaler, cfg, log) -> dict:
    state = ckpt.load_training_state(path)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        raise UserError(
            f"{path}: does not match this run's networks ({'; '.join(d.strip() for d in detail[:3])}); "
            "it was written by another method/arch/num_classes; start fresh or fix the config"
        ) from err
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"{path}: optimizer state does not match this run's parameters ({err})") from err
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    old = state.get("config", {})
    new = config_to_dict(cfg)
    changed = sorted(k for k in set(old) | set(new) if k not in _ROUTINE_KEYS and old.get(k) != new.get(k))
    if changed:
        log.info("note: config differs from the checkpoint's in " +
                 ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed))
    return state


def train(cfg, *, method=None, loader=None, val_dataset=None, resume: str = "") -> dict:
    """Train ``method`` with the recipe ``cfg`` (a base or resolved config), on this process's share.

    Under torchrun every process calls it. ``method`` / ``loader`` / ``val_dataset`` default to
    ``furnace.methods.build_method(cfg)``, ``furnace.datasets.TrainLoader(...)`` and
    ``furnace.datasets.build_val_dataset(cfg)``. ``resume``: ``""`` fresh, ``"auto"`` continue from
    ``output_dir/checkpoints/latest.pth`` when present, or a path to such a file.

    Writes ``checkpoints/latest.pth`` every epoch (and every ``save_every_iters``), snapshots
    ``checkpoints/epoch-<e>.pth`` by the snapshot rule, ``log.txt`` and ``tb/``. SIGTERM/SIGINT finish
    the current iteration, save ``latest.pth`` and return with status ``"interrupted"``.

    Returns ``dict(status="finished"|"interrupted", epoch, global_iter, total_iters, eval, miou,
    latest, output_dir, signal)``; ``eval`` is the final evaluation (see :func:`evaluate`), None
    when interrupted.
    """
    # Config and data errors first, before joining the process group: they stop every process alike,
    # so none is left waiting in the rendezvous. The data check precedes resolution so that a
    # labeled_ratio without split lists is reported as such rather than as a missing epoch count.
    validate_config(cfg)
    if cfg.check_data:
        from furnace.datasets import check_dataset

        check_dataset(cfg)
    cfg = resolve_config(cfg, dist.env_world_size())
    resume_path = ckpt.find_resume(cfg, resume)
    rank, world, device = dist.setup(cfg.device)
    log = TrainLogger(cfg.output_dir, enabled=dist.is_main(), log_every=cfg.log_every)
    if resume == "auto" and resume_path is None:
        log.info(f"--resume auto: no {ckpt.latest_path(cfg)} yet, starting fresh")
    try:
        return _train(cfg, rank, world, device, method, loader, val_dataset, resume_path, log)
    finally:
        log.close()


def _train(cfg, rank, world, device, method, loader, val_dataset, resume_path, log) -> dict:
    log.log_config(cfg)
    if resume_path is None and ckpt.latest_path(cfg).is_file():
        log.info(f"warning: starting fresh; {ckpt.latest_path(cfg)} will be overwritten "
                 "(use --resume auto to continue that run instead)")
    stale = dist.run_on_main(lambda: ckpt.remove_stale_temporaries(cfg))
    if stale:
        log.info(f"removed {len(stale)} partial file(s) an interrupted save left in {ckpt.checkpoint_dir(cfg)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)  # identical initial weights on every process
    if method is None:
        from furnace.methods import build_method

        method = build_method(cfg)
    method.to(device)
    seed_everything(cfg.seed + rank)  # per-process streams for everything the method draws in training
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if world > 1 and device.type == "cuda":
        method = dist.sync_batchnorm(method, backbones=cfg.sync_bn_backbone)
    optimizer = build_optimizer(method, cfg)
    dtype = dist.amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    epoch = it_in_epoch = global_iter = 0
    if resume_path is not None:
        state = _load_state(resume_path, method, optimizer, scaler, cfg, log)
        epoch, it_in_epoch, global_iter = state["epoch"], state["iter_in_epoch"], state["global_iter"]
        if state.get("world_size") == world:
            ckpt.set_rng_state(state["rng"][rank])
        else:
            seed_everything(cfg.seed + rank + 7919 * global_iter)
            log.info(f"note: {resume_path} was written by {state.get('world_size')} process(es), this run has "
                     f"{world}; random streams restart (data order is unaffected)")
        log.info(f"resumed from {resume_path}: epoch {epoch + 1}, iteration {global_iter}")

    model = ddp = method
    if world > 1:
        ddp = model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    if loader is None:
        from furnace.datasets import TrainLoader

        with ckpt.preserved_cpu_rng():
            loader = TrainLoader(cfg, rank=rank, world_size=world,
                                 need_unlabeled=getattr(method, "needs_unlabeled", True))
    if val_dataset is None:
        from furnace.datasets import build_val_dataset

        val_dataset = build_val_dataset(cfg)
    ipe = int(loader.iters_per_epoch)
    if ipe <= 0:
        raise UserError(f"config: the training lists give 0 iterations per epoch with global_batch="
                        f"{cfg.global_batch}; use a smaller global_batch or more training images")
    accum = accumulation_steps(cfg, world)
    total = cfg.epochs * ipe
    stop_at = min(total, cfg.max_iters) if cfg.max_iters > 0 else total
    _, palette = dataset_meta(cfg)
    evaluator = Evaluator(cfg, device)
    log.total_iters, log.start_iter = stop_at, global_iter
    log.info(f"training {type(method).__name__} on {world} process(es), device {device}, "
             f"amp {str(dtype).replace('torch.', '') if dtype else 'off'}; global batch {cfg.global_batch} = "
             f"{world} process(es) x {accum} micro-batch(es) x {cfg.micro_batch}; {ipe} iterations/epoch x "
             f"{cfg.epochs} epochs = {total} iterations" + (f", stopping at {stop_at}" if stop_at < total else ""))

    if it_in_epoch >= ipe:  # the epoch got shorter since the checkpoint (other lists): start the next one
        epoch, it_in_epoch = epoch + 1, 0
    last_saved = [None]
    snapshots_written: set[int] = set()

    def save_latest():
        rng = dist.all_gather_object(ckpt.get_rng_state())
        dist.run_on_main(lambda: ckpt.save_training_state(
            ckpt.latest_path(cfg), method=method, optimizer=optimizer, scaler=scaler, epoch=epoch,
            iter_in_epoch=it_in_epoch, global_iter=global_iter, rng=rng, cfg=cfg))
        last_saved[0] = global_iter

    def save_snapshot(label: int):
        net = method.eval_network()
        dist.run_on_main(lambda: ckpt.save_snapshot(
            net, ckpt.snapshot_path(cfg, label), extra={"epoch": label, "iteration": global_iter}))
        snapshots_written.add(label)

    def run_eval():
        dist.broadcast_buffers(method)  # evaluate on every rank the network rank 0 snapshots
        with ckpt.preserved_cpu_rng():
            res = evaluator.run(method.eval_network(), val_dataset)
        log.evaluation(res, global_iter)
        return res

    status, signum, result, eval_at, stop_any = "finished", 0, None, -1, False
    t_start, done_here = time.time(), 0
    log.start_bar()
    with StopRequest(announce=dist.is_main()) as stop:
        while global_iter < stop_at:
            with ckpt.preserved_cpu_rng():
                batches = iter(loader.epoch(epoch, it_in_epoch))
            while it_in_epoch < ipe and global_iter < stop_at:
                lr = poly_lr(cfg.lr, global_iter, total, cfg.lr_power, cfg.warmup_iters)
                set_lr(optimizer, lr)
                optimizer.zero_grad(set_to_none=True)
                mean, stop_any, batch = _forward_backward(model, ddp, batches, accum, device, dtype, scaler,
                                                          cfg.channels_last, stop)
                bad = [k for k, v in mean.items() if not math.isfinite(v)]
                if bad:
                    kept = (f"{ckpt.latest_path(cfg)} keeps the state after iteration {last_saved[0]}"
                            if last_saved[0] is not None else "no checkpoint was written in this session")
                    raise UserError(
                        f"iteration {global_iter + 1} (epoch {epoch + 1}): non-finite loss "
                        f"{', '.join(f'{k}={mean[k]}' for k in bad)}; training stopped without saving "
                        f"({kept}). Lower lr, check the data, or use amp=bf16/none, then --resume auto")
                scaler.step(optimizer)
                scaler.update()
                global_iter += 1
                it_in_epoch += 1
                done_here += 1
                ips = cfg.global_batch * done_here / max(time.time() - t_start, 1e-9)
                log.iteration(global_iter, epoch, cfg.epochs, mean, lr, ips)
                if cfg.tb_images_every > 0 and global_iter % cfg.tb_images_every == 0 and dist.is_main():
                    _log_predictions(log, method, batch, palette, global_iter, dtype, device)
                if it_in_epoch == ipe:
                    break  # epoch end is handled below
                if (cfg.save_every_iters > 0 and global_iter % cfg.save_every_iters == 0) \
                        or global_iter == stop_at or stop_any:
                    save_latest()
                if stop_any:
                    status, signum = "interrupted", stop.signum or int(signal.SIGTERM)
                    break
            if status == "interrupted":
                break
            if it_in_epoch == ipe:
                epoch, it_in_epoch = epoch + 1, 0
                save_latest()
                if ckpt.keep_snapshot(epoch, cfg.epochs, cfg.snapshot_last, cfg.snapshot_every):
                    save_snapshot(epoch)
                if cfg.eval_every_epochs > 0 and epoch % cfg.eval_every_epochs == 0:
                    result, eval_at = run_eval(), global_iter
                if stop_any:
                    status, signum = "interrupted", stop.signum or int(signal.SIGTERM)
                    break
    log.close_bar()

    out = {"status": status, "epoch": epoch, "global_iter": global_iter, "total_iters": total,
           "latest": str(ckpt.latest_path(cfg)), "output_dir": str(cfg.output_dir), "signal": signum,
           "eval": None, "miou": None}
    if status == "interrupted":
        log.info(f"interrupted by {signal.Signals(signum).name} after iteration {global_iter}; state saved to "
                 f"{ckpt.latest_path(cfg)}. Continue with: train.py --resume auto (and the same KEY=VALUE "
                 "overrides)")
        return out

    # the run's final network is always kept, also when max_iters stopped it mid-epoch
    label = epoch + 1 if it_in_epoch else epoch
    if label > 0 and label not in snapshots_written:
        save_snapshot(label)
    dist.run_on_main(lambda: method.on_train_end(cfg))
    if eval_at != global_iter:
        result = run_eval()
    final = ckpt.snapshot_path(cfg, label)
    dist.run_on_main(lambda: ckpt.write_eval_results(ckpt.eval_results_file(final),
                                                     {final.name: ckpt.eval_entry(label, final, result, cfg)},
                                                     last=final.name))
    log.info(f"finished: iteration {global_iter}/{total}, val mIoU {100 * result['miou']:.2f}")
    out.update(eval=result, miou=result["miou"])
    return out


def _forward_backward(model, ddp, batches, accum, device, dtype, scaler, channels_last, stop):
    """Gradients of one optimizer iteration: ``accum`` micro-batches, each loss scaled by ``1/accum``.

    DDP synchronises gradients only on the last micro-batch. Returns ``(mean, stop_any, last_batch)``:
    every loss term averaged over micro-batches and processes (one collective, which also tells every
    process whether any of them was asked to stop).
    """
    sums: dict[str, torch.Tensor] = {}
    for m in range(accum):
        with ckpt.preserved_cpu_rng():
            batch = next(batches, None)
        if batch is None:
            raise RuntimeError(f"the loader's epoch ended before {accum} micro-batches of an iteration")
        batch = to_device(batch, device, channels_last=channels_last)
        sync = m == accum - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
        with (contextlib.nullcontext() if sync else ddp.no_sync()):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                losses = model(batch)
            if "loss" not in losses:
                raise RuntimeError(f"the method returned {sorted(losses)} without 'loss'")
            scaler.scale(losses["loss"] / accum).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
    keys = list(sums)
    # the stop flag is read as late as possible: a signal during this iteration stops after it
    shared = torch.stack([sums[k] for k in keys] + [torch.tensor(float(stop.requested), device=device)])
    values = dist.all_reduce_sum(shared).tolist()
    world = dist.get_world_size()
    return {k: values[i] / world for i, k in enumerate(keys)}, values[-1] > 0, batch


@torch.no_grad()
def _log_predictions(log, method, batch, palette, step, dtype, device, count: int = 2):
    """TB images of the eval network's predictions on the first labeled images of ``batch``."""
    if "image_l" not in batch or "label_l" not in batch:
        return
    net = method.eval_network()
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with ckpt.preserved_cpu_rng(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(batch["image_l"][:count])
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        log.images(step, batch["image_l"][:count], batch["label_l"][:count], logits.argmax(1), palette)
    finally:
        for m, training in modes:
            m.training = training
