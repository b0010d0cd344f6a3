"""What a run reports: a tqdm bar, ``log.txt`` and TensorBoard (``tb/``) in the run directory, on rank 0 only.

A log that cannot be written never stops or stalls training: the failed sink is switched off with one warning,
and the next (atomic, self-reporting) checkpoint write decides whether the run can go on."""
import contextlib
import datetime
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import config_to_dict
from ..datasets.layouts import colorize
from ..runtime.images import IMAGENET_MEAN, IMAGENET_STD
from ..utils import UserError
from .evaluator import format_results


class TrainLogger:
    """Progress bar, text log and TensorBoard writer of one run; every method is a no-op unless ``enabled``.
    The loop sets ``total_iters`` (where the run stops: bar and ETA) and ``start_iter`` (after a resume)."""

    def __init__(self, output_dir, *, enabled: bool, log_every: int = 20):
        self.enabled, self.log_every = enabled, max(1, int(log_every))
        self.total_iters = self.start_iter = 0
        self._t0 = time.time()
        self._window: dict[str, list[float]] = {}
        self._file = self._tb = self._bar = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._file_path, self._tb_dir = out / "log.txt", out / "tb"
        from tensorboardX import SummaryWriter

        try:
            self._file = open(self._file_path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
            # an unbounded queue: if the writer's thread dies on an I/O error, a full queue would block training
            self._tb = SummaryWriter(str(self._tb_dir), max_queue=0)
        except OSError as err:
            if self._file is not None:
                self._file.close()
            raise UserError(f"{out}: cannot write the run's logs there ({type(err).__name__}: {err}); free disk "
                            f"space, fix permissions or choose another output_dir=") from err

    def _print(self, message: str, file=None) -> None:
        if self._bar is not None:
            tqdm.write(message, file=file)  # above the bar
        else:
            print(message, file=file, flush=True)

    def _warn_off(self, what, err: BaseException) -> None:
        self._print(f"warning: {what}: writing the log failed ({type(err).__name__}: {err}); it is off for the rest "
                    f"of this run and training goes on. Free disk space before the next checkpoint is written "
                    f"(checkpoints are atomic: a failed write keeps the previous file and stops with an error)",
                    file=sys.stderr)

    def _write(self, text: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as err:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()
            self._warn_off(self._file_path, err)

    def _tb_call(self, method: str, *args, **kwargs) -> None:
        if self._tb is None:
            return
        try:
            getattr(self._tb, method)(*args, **kwargs)
        except OSError as err:
            self._tb = None
            self._warn_off(self._tb_dir, err)

    def info(self, message: str, console: bool = True) -> None:
        """One line to the console (above the bar; ``console=False``: not) and to log.txt."""
        if not self.enabled:
            return
        if console:
            self._print(message)
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self._write("".join(f"[{stamp}] {line}\n" for line in message.splitlines() or [""]))

    def log_config(self, cfg) -> None:
        """The resolved config, in full, to log.txt (console gets one line)."""
        if not self.enabled:
            return
        text = json.dumps(config_to_dict(cfg), indent=2, sort_keys=True, default=str)
        self._write(f"config:\n{text}\n")
        self.info(f"run directory {cfg.output_dir}; config written to log.txt")

    def start_bar(self) -> None:
        if not self.enabled:
            return
        self._t0 = time.time()
        self._bar = tqdm(total=self.total_iters, initial=self.start_iter, dynamic_ncols=True,
                         mininterval=1.0, desc="train", unit="it")

    def iteration(self, global_iter: int, epoch: int, epochs: int, losses: dict, lr: float, images_per_s: float):
        """After optimizer step ``global_iter`` (1-based): the bar every step, a log line and TB scalars
        (losses averaged over the window) every ``log_every`` steps."""
        if not self.enabled:
            return
        for k, v in losses.items():
            self._window.setdefault(k, []).append(v)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()} | {"lr": f"{lr:.2e}"}, refresh=False)
            self._bar.update(1)
        if global_iter % self.log_every and global_iter != self.total_iters:
            return
        means = {k: float(np.mean(v)) for k, v in self._window.items()}
        self._window = {}
        for k, v in means.items():
            self._tb_call("add_scalar", f"train/{k}", v, global_iter)
        self._tb_call("add_scalar", "train/lr", lr, global_iter)
        self._tb_call("add_scalar", "train/images_per_s", images_per_s, global_iter)
        done = global_iter - self.start_iter
        eta = (time.time() - self._t0) / done * (self.total_iters - global_iter) if done > 0 else float("nan")
        eta_text = str(datetime.timedelta(seconds=int(eta))) if math.isfinite(eta) and eta >= 0 else "?"
        terms = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        self.info(f"epoch {epoch + 1}/{epochs} it {global_iter}/{self.total_iters} lr {lr:.3e} {terms} "
                  f"{images_per_s:.1f} img/s eta {eta_text}")

    def images(self, global_iter: int, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
               palette: np.ndarray) -> None:
        """TB image per sample, input | ground truth | prediction: ``images`` (B,3,H,W) ImageNet-normalised,
        ``labels`` / ``preds`` (B,H,W) class indices (255 = ignore)."""
        if not self.enabled:
            return
        x = images.detach().float().cpu() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) \
            + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        rgb = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(rgb.shape[0]):
            row = np.concatenate([rgb[i], colorize(labels[i].cpu().numpy(), palette),
                                  colorize(preds[i].cpu().numpy(), palette)], axis=1)
            self._tb_call("add_image", f"train/prediction_{i}", row, global_iter, dataformats="HWC")

    def evaluation(self, result: dict, step: int, prefix: str = "val") -> None:
        """mIoU, pixel accuracy and per-class IoU (tagged with class names) to TB, the table to log.txt."""
        if not self.enabled:
            return
        self._tb_call("add_scalar", f"{prefix}/miou", result["miou"], step)
        self._tb_call("add_scalar", f"{prefix}/pixel_acc", result["pixel_acc"], step)
        for name, iou in zip(result["class_names"], result["iou"]):
            if math.isfinite(iou):
                self._tb_call("add_scalar", f"{prefix}/iou/{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}", iou, step)
        self._tb_call("flush")
        self.info(format_results(result))

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        self._tb_call("close")
        self._tb = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
