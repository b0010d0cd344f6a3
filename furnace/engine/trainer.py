"""The one training loop, for every method. A method is an ``nn.Module`` whose parameters are exactly the trained
networks; ``method(batch)`` returns a dict of scalar losses, ``"loss"`` the total. ``ddp`` wraps ``method`` in
DistributedDataParallel (itself in one process); ``ddp_call`` is ``ddp``, compiled when ``cfg.compile``. An iteration
runs ``accum = global_batch / world_size / micro_batch`` micro-batches per process, each loss scaled by ``1/accum``:
with DDP's average over processes it applies the gradient of the global batch's mean at any process count."""
import contextlib
import math
import signal
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import batch_split, config_to_dict
from ..datasets.batch import IMAGE_L, LABEL_L
from ..datasets.device import to_device
from ..models import segmentor_record
from ..utils import UserError
from . import checkpoint as ckpt
from . import dist
from .evaluator import Evaluator, eval_mode
from .logger import TrainLogger
from .optim import build_optimizer, poly_lr
from .rng import get_rng_state, preserved_cpu_rng, seed_everything, set_rng_state

# config keys whose change on resume is routine (not worth a note in the log)
_ROUTINE_KEYS = {"max_iters", "output_dir", "data_root", "weight_dir", "num_workers", "log_every", "tb_images_every",
                 "save_every_iters", "save_every_minutes", "dist_timeout_s", "device", "check_data",
                 "eval_every_epochs", "exp_name", "exp_dir"}


def train(cfg, *, method, loader, val_dataset, device, resume_path=None) -> dict:
    """Train ``method`` on this process's ``loader`` share with the prepared ``cfg``, on the ``device`` of
    :func:`furnace.engine.dist.setup`; every torchrun process calls it. ``resume_path``: a ``latest.pth``, or None.
    Writes ``checkpoints/``, ``log.txt`` and ``tb/``; SIGTERM/SIGINT/SIGUSR1 finish the iteration and save
    ``latest.pth``.
    Returns ``dict(status="finished"|"interrupted", epoch, global_iter, total_iters, eval, miou, latest,
    output_dir, signal)``; ``eval`` is the final evaluation, None when interrupted."""
    log = TrainLogger(cfg.output_dir, enabled=dist.is_main(), log_every=cfg.log_every)
    try:
        loop = _Loop(cfg, method, loader, val_dataset, device, log, resume_path)
        state = loop.restore(resume_path)
        loop.plan(state)
        loop.run(state)
        return loop.finish(state)
    except UserError as err:  # the run directory says why the run stopped (the console gets the line from the CLI)
        log.info(f"error: {err}", console=False)
        raise
    finally:
        log.close()


@dataclass
class LoopState:
    """Where the loop stands; ``latest.pth`` keeps the first three."""

    epoch: int = 0  # 0-based epoch in progress
    it_in_epoch: int = 0  # iterations of it done
    global_iter: int = 0  # optimizer steps done = the LR-schedule position
    last_saved: int | None = None  # global_iter of this session's last latest.pth
    saved_at: float = 0.0  # time.monotonic() of that save (or of the session's start)
    snapshots: set = field(default_factory=set)  # epoch labels snapshotted in this session
    result: dict | None = None  # the latest evaluation
    eval_at: int = -1  # global_iter of that evaluation
    stopped_by: int = 0  # the signal that interrupted the run (0: not interrupted)
    started: float = 0.0  # wall time at the start of this session's loop
    done_here: int = 0  # iterations of this session


class _Loop:
    """The parts of one training run and the loop's steps over a :class:`LoopState`."""

    def __init__(self, cfg, method, loader, val_dataset, device, log, resume_path):
        self.cfg, self.loader, self.val_dataset = cfg, loader, val_dataset
        self.rank, self.world, self.device, self.log = dist.get_rank(), dist.get_world_size(), device, log
        log.log_config(cfg)
        if resume_path is None and ckpt.latest_path(cfg).is_file():
            log.info(f"warning: starting fresh; {ckpt.latest_path(cfg)} will be overwritten "
                     "(use --resume auto to continue that run instead)")
        stale = dist.run_on_main(lambda: ckpt.remove_stale_temporaries(cfg))
        if stale:
            log.info(f"removed {len(stale)} partial file(s) an interrupted save left in {ckpt.checkpoint_dir(cfg)}")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        method.to(device)
        seed_everything(cfg.seed + self.rank)  # per-process streams for everything the method draws in training
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        if self.world > 1 and device.type == "cuda":
            method = dist.sync_batchnorm(method, backbones=cfg.sync_bn_backbone)
        self.method = self.ddp = self.ddp_call = method
        self.optimizer = build_optimizer(method, cfg)
        self.dtype, self.precision = dist.amp_choice(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def restore(self, path) -> LoopState:
        """A fresh :class:`LoopState`, or the one ``path`` holds (networks, optimizer, scaler, RNG too)."""
        state = LoopState()
        if path is None:
            return state
        saved = ckpt.load_training_state(path)
        try:
            self.method.load_state_dict(saved["method"])
        except RuntimeError as err:
            detail = str(err).strip().splitlines()
            raise UserError(
                f"{path}: does not match this run's networks ({'; '.join(d.strip() for d in detail[:3])}); "
                "it was written by another method/arch/num_classes; start fresh or fix the config") from err
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as err:
            raise UserError(f"{path}: optimizer state does not match this run's parameters ({err})") from err
        if self.scaler.is_enabled() and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        old, new = saved.get("config", {}), config_to_dict(self.cfg)
        changed = sorted(k for k in set(old) | set(new) if k not in _ROUTINE_KEYS and old.get(k) != new.get(k))
        if changed:
            self.log.info("note: config differs from the checkpoint's in " +
                          ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed))
        state.epoch, state.it_in_epoch, state.global_iter = saved["epoch"], saved["iter_in_epoch"], saved["global_iter"]
        if saved.get("world_size") == self.world:
            set_rng_state(saved["rng"][self.rank])
        else:
            seed_everything(self.cfg.seed + self.rank + 7919 * state.global_iter)
            self.log.info(f"note: {path} was written by {saved.get('world_size')} process(es), this run "
                          f"has {self.world}; random streams restart (data order is unaffected)")
        self.log.info(f"resumed from {path}: epoch {state.epoch + 1}, iteration {state.global_iter}")
        return state

    def plan(self, state: LoopState) -> None:
        """DDP (and compile) around the restored method, the schedule and the evaluator."""
        cfg, log = self.cfg, self.log
        if self.world > 1:
            self.ddp = self.ddp_call = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.ddp_call = torch.compile(self.ddp)
        self.ipe = ipe = int(self.loader.iters_per_epoch)
        if ipe <= 0:
            raise UserError(f"config: the training lists give 0 iterations per epoch with global_batch="
                            f"{cfg.global_batch}; use a smaller global_batch or more training images")
        self.accum = batch_split(cfg, self.world)[1]
        self.epochs = math.ceil(cfg.train_iters / ipe) if cfg.train_iters else cfg.epochs
        self.total = total = cfg.train_iters or cfg.epochs * ipe
        self.stop_at = stop_at = min(total, cfg.max_iters) if cfg.max_iters > 0 else total
        self.layout = getattr(self.val_dataset, "layout", None)  # class names and palette
        self.evaluator = Evaluator(cfg, self.device, layout=self.layout)
        log.total_iters, log.start_iter = stop_at, state.global_iter
        amp = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(self.dtype, "fp32")
        budget = f"train_iters {total} ({self.epochs} epochs)" if cfg.train_iters else f"{cfg.epochs} epochs = {total}"
        log.info(f"training {type(self.method).__name__} on {self.world} process(es), device {self.device}, {amp} "
                 f"({self.precision}); global batch {cfg.global_batch} = {self.world} process(es) x {self.accum} "
                 f"micro-batch(es) x {cfg.micro_batch}; {ipe} iterations/epoch x {budget} iterations"
                 + (f", stopping at {stop_at}" if stop_at < total else ""))
        if hasattr(self.loader, "n_labeled"):
            uses = getattr(self.method, "uses_unlabeled", True)
            log.info(f"data: {self.loader.n_labeled} labeled and {self.loader.n_unlabeled} unlabeled images"
                     + ("" if uses else " (the unlabeled list only sets the epoch length)")
                     + f"; an epoch is max(labeled, unlabeled) // {cfg.global_batch} = {ipe} iterations")
        if state.it_in_epoch >= ipe:  # the epoch got shorter since the checkpoint (other lists): start the next one
            state.epoch, state.it_in_epoch = state.epoch + 1, 0

    def run(self, state: LoopState) -> None:
        """Epochs until ``stop_at`` or a stop request (SIGTERM/SIGINT/SIGUSR1 on any process)."""
        state.started, state.saved_at = time.time(), time.monotonic()
        self.log.start_bar()
        with dist.StopRequest(announce=dist.is_main()) as stop:
            while state.global_iter < self.stop_at and not state.stopped_by:
                self.run_epoch(state, stop)
        self.log.close_bar()

    def run_epoch(self, state: LoopState, stop) -> None:
        """The rest of the epoch in progress, with the saves, snapshot and evaluation the config asks for."""
        cfg = self.cfg
        with preserved_cpu_rng():
            batches = iter(self.loader.epoch(state.epoch, state.it_in_epoch))
        while state.it_in_epoch < self.ipe and state.global_iter < self.stop_at:
            stop_any, save_due = self.iteration(state, batches, stop)
            epoch_done = state.it_in_epoch == self.ipe
            if epoch_done:
                state.epoch, state.it_in_epoch = state.epoch + 1, 0
            # the epoch's snapshot before latest.pth: a run killed between the two redoes the epoch's end on resume
            if epoch_done:
                self.save_snapshot(state, state.epoch,
                                   ckpt.keep_snapshot(state.epoch, self.epochs, cfg.snapshot_last, cfg.snapshot_every))
                if cfg.eval_every_epochs > 0 and state.epoch % cfg.eval_every_epochs == 0:
                    self.evaluate(state)
            # at an epoch's end too only when a rule says so: an epoch of a small dataset is a few iterations
            if (cfg.save_every_iters > 0 and state.global_iter % cfg.save_every_iters == 0) or save_due or stop_any \
                    or state.global_iter == self.stop_at or (epoch_done and not cfg.save_every_minutes):
                self.save_latest(state)
            if stop_any:  # the one interrupt path: the state is saved by now
                state.stopped_by = stop.signum or int(signal.SIGTERM)
            if epoch_done or stop_any:
                return

    def iteration(self, state: LoopState, batches, stop) -> tuple[bool, bool]:
        """One optimizer step; ``(stop_any, save_due)``: whether any process was asked to stop, and whether
        ``save_every_minutes`` passed since the last save (rank 0's clock, so that every rank saves here)."""
        cfg = self.cfg
        lr = poly_lr(cfg.lr, state.global_iter, self.total, cfg.lr_power, cfg.warmup_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        minutes = cfg.save_every_minutes
        due_here = dist.is_main() and minutes > 0 and time.monotonic() - state.saved_at >= 60 * minutes
        mean, stop_any, save_due, batch = self.forward_backward(batches, stop, due_here)
        bad = [k for k, v in mean.items() if not math.isfinite(v)]
        if bad:
            kept = (f"{ckpt.latest_path(cfg)} keeps the state after iteration {state.last_saved}"
                    if state.last_saved is not None else "no checkpoint was written in this session")
            raise UserError(
                f"iteration {state.global_iter + 1} (epoch {state.epoch + 1}): non-finite loss "
                f"{', '.join(f'{k}={mean[k]}' for k in bad)}; training stopped without saving "
                f"({kept}). Lower lr, check the data, or use amp=bf16/none, then --resume auto")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        state.global_iter += 1
        state.it_in_epoch += 1
        state.done_here += 1
        ips = cfg.global_batch * state.done_here / max(time.time() - state.started, 1e-9)
        self.log.iteration(state.global_iter, state.epoch, self.epochs, mean, lr, ips)
        if cfg.tb_images_every > 0 and state.global_iter % cfg.tb_images_every == 0 and dist.is_main():
            self.log_predictions(batch, state.global_iter)
        return stop_any, save_due

    def forward_backward(self, batches, stop, save_wanted: bool = False) -> tuple[dict, bool, bool, dict]:
        """Gradients of ``accum`` micro-batches, DDP synchronising only on the last. Returns ``(mean, stop_any,
        save_any, last_batch)``: each loss term averaged over micro-batches and processes, in one collective that
        also tells every process whether any was asked to stop and whether any has a save due."""
        sums: dict[str, torch.Tensor] = {}
        for m in range(self.accum):
            with preserved_cpu_rng():
                batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"the loader's epoch ended before {self.accum} micro-batches of an iteration")
            batch = to_device(batch, self.device, channels_last=self.cfg.channels_last)
            sync = m == self.accum - 1 or self.ddp is self.method
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    losses = self.ddp_call(batch)
                if "loss" not in losses:
                    raise RuntimeError(f"the method returned {sorted(losses)} without 'loss'")
                self.scaler.scale(losses["loss"] / self.accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / self.accum
        # the stop flag is read as late as possible: a signal during this iteration stops after it
        flags = torch.tensor([float(stop.requested), float(save_wanted)], device=self.device)
        values = dist.all_reduce_sum(torch.stack([*sums.values(), *flags])).tolist()
        return {k: v / self.world for k, v in zip(sums, values)}, values[-2] > 0, values[-1] > 0, batch

    def save_latest(self, state: LoopState) -> None:
        rng = dist.all_gather_object(get_rng_state())
        dist.run_on_main(lambda: ckpt.save_training_state(
            ckpt.latest_path(self.cfg), method=self.method, optimizer=self.optimizer, scaler=self.scaler,
            epoch=state.epoch, iter_in_epoch=state.it_in_epoch, global_iter=state.global_iter, rng=rng, cfg=self.cfg))
        state.last_saved, state.saved_at = state.global_iter, time.monotonic()

    def save_snapshot(self, state: LoopState, label: int, keep: bool = True) -> None:
        """``epoch-<label>.pth``; with ``keep`` False only over a file of that label already there (the network
        of a run stopped early in that epoch, replaced by the epoch's end)."""
        net, path = self.method.eval_network(), ckpt.snapshot_path(self.cfg, label)
        dist.run_on_main(lambda: (keep or path.is_file()) and ckpt.save_snapshot(
            net, path, extra={"epoch": label, "iteration": state.global_iter, **segmentor_record(self.cfg, self.layout)}))
        if keep:
            state.snapshots.add(label)

    def evaluate(self, state: LoopState) -> None:
        dist.broadcast_buffers(self.method)  # evaluate on every rank the network rank 0 snapshots
        with preserved_cpu_rng():
            state.result = self.evaluator.run(self.method.eval_network(), self.val_dataset)
        state.eval_at = state.global_iter
        self.log.evaluation(state.result, state.global_iter)

    @torch.no_grad()
    def log_predictions(self, batch, step: int, count: int = 2) -> None:
        """TB images of the eval network's predictions on the first labeled images of ``batch``."""
        if IMAGE_L not in batch or LABEL_L not in batch:
            return
        with eval_mode(self.method.eval_network()) as net, preserved_cpu_rng(), \
                torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = net(batch[IMAGE_L][:count])
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        self.log.images(step, batch[IMAGE_L][:count], batch[LABEL_L][:count], logits.argmax(1), self.evaluator.palette)

    def finish(self, state: LoopState) -> dict:
        """The run's result; when not interrupted also the final snapshot, evaluation and results file."""
        cfg, log = self.cfg, self.log
        out = {"status": "interrupted" if state.stopped_by else "finished", "epoch": state.epoch,
               "global_iter": state.global_iter, "total_iters": self.total, "latest": str(ckpt.latest_path(cfg)),
               "output_dir": str(cfg.output_dir), "signal": state.stopped_by, "eval": None, "miou": None}
        if state.stopped_by:
            log.info(f"interrupted by {signal.Signals(state.stopped_by).name} after iteration {state.global_iter}; "
                     f"state saved to {ckpt.latest_path(cfg)}. Continue with: train.py --resume auto (and the "
                     "same KEY=VALUE overrides)")
            return out
        # the run's final network is always kept, also when max_iters stopped it mid-epoch
        label = state.epoch + 1 if state.it_in_epoch else state.epoch
        if label > 0 and label not in state.snapshots:
            self.save_snapshot(state, label)
        dist.run_on_main(lambda: self.method.on_train_end(self.layout))
        if state.eval_at != state.global_iter:
            self.evaluate(state)
        final, result = ckpt.snapshot_path(cfg, label), state.result
        dist.run_on_main(lambda: ckpt.write_eval_results(
            ckpt.eval_results_file(final), {final.name: ckpt.eval_entry(label, final, result, cfg)},
            last=final.name))
        log.info(f"finished: iteration {state.global_iter}/{self.total}, val mIoU {100 * result['miou']:.2f}")
        out.update(eval=result, miou=result["miou"])
        return out
