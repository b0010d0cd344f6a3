"""Sliding-window, multi-scale, flip evaluation and the confusion-matrix metrics (SPEC §8).

Prediction of one image (``Evaluator.predict``):

* per scale ``s`` in ``cfg.eval_scales`` the uint8 image is resized by ``s`` (cv2 bilinear, like the
  training augmentation), normalised, and predicted with a sliding window;
* sliding window: window ``crop = cfg.eval_crop``, stride ``ceil(2/3 * crop)``; an axis shorter than the
  window is centre-padded to it (0 = the mean colour after normalisation, as in training); along a
  longer axis the windows start at 0, stride, 2*stride, ... and the last is shifted back to end at the
  border; windows go through the network ``cfg.eval_batch`` at a time; with ``cfg.eval_flip`` each
  window is also predicted mirrored and those logits, mirrored back, are added to the window's own (the
  original's rule: the flip is applied per window, not to the whole image); overlapping windows'
  logits are averaged (count map);
* the scales are combined as the original did: the **raw logits** of each scale, resized to the image,
  are summed (no softmax). With one scale and no flip the result is the plain logits.

Precision: fp32 unless ``cfg.eval_amp`` asks for bf16 / fp16 (GPU only) autocast; the training ``amp``
setting does not apply here.

Metrics come from a C x C int64 confusion matrix (rows = ground truth, columns = prediction) over the
pixels with ``0 <= gt < C``, summed over processes; the val list is sharded so that every image is
evaluated by exactly one process.
"""
import contextlib
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.layouts import DatasetLayout, classes_and_palette, colorize, generic_class_names, layout_of
from ..datasets.transforms import normalize
# the geometry's one home is the torch-free runtime; re-exported for the evaluator's users
from ..runtime.windows import center_pad, sliding_windows, window_stride  # noqa: F401
from ..utils import UserError, raise_item_error, user_error_as_item
from . import dist
from .rng import preserved_cpu_rng


# ----------------------------------------------------------------------------- metrics


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,C) int64 counts, rows = ground truth, columns = prediction, over pixels with 0 <= gt < C.

    ``pred`` and ``gt`` are integer tensors of the same shape; ``pred`` values must lie in [0, C).
    """
    gt = gt.long()
    valid = (gt >= 0) & (gt < num_classes)
    idx = gt[valid] * num_classes + pred.long()[valid]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Metrics of a (C,C) confusion matrix.

    Returns ``miou`` (mean of IoU over the classes present in ground truth or prediction; fractions in
    [0, 1]), ``iou`` (list of C floats, NaN for classes present in neither), ``class_names``,
    ``pixel_acc`` (correct / counted pixels) and ``confusion`` (the matrix as an int64 ndarray).
    """
    conf = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp  # TP + FP + FN
    present = union > 0
    iou = np.full(len(tp), np.nan)
    iou[present] = tp[present] / union[present]
    total = conf.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "iou": [float(v) for v in iou],
        "class_names": list(class_names) if class_names is not None else generic_class_names(len(tp)),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "confusion": conf,
    }


def format_results(res: dict) -> str:
    """A plain-text table: per-class IoU (%) with names, then mIoU and pixel accuracy."""
    width = max([len(n) for n in res["class_names"]] + [5])
    lines = [f"{'class'.ljust(width)}    IoU"]
    for name, iou in zip(res["class_names"], res["iou"]):
        lines.append(f"{name.ljust(width)}  {100 * iou:5.2f}" if math.isfinite(iou) else f"{name.ljust(width)}      -")
    present = sum(math.isfinite(v) for v in res["iou"])
    lines.append(f"{'mIoU'.ljust(width)}  {100 * res['miou']:5.2f}   pixel acc {100 * res['pixel_acc']:.2f}   "
                 f"(classes present {present}/{len(res['iou'])})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the evaluator


def _identity(sample):
    return sample


class _Samples(torch.utils.data.Dataset):
    """``dataset[i]`` for ``i`` in ``indices``, a UserError (a bad val file) returned as an item
    (:func:`furnace.utils.user_error_as_item`) so the one-line message that names the file survives
    a loader worker."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return user_error_as_item(self.dataset.__getitem__, self.indices[i])


def _safe_name(name: str) -> str:
    return re.sub(r"[\\/:]+", "_", str(name)).strip("._") or "image"


@contextlib.contextmanager
def eval_mode(net):
    """``net`` in eval mode for the block; every submodule's own train/eval flag is restored after it.
    A network that is not a torch module (an exported file in ONNX Runtime) is used as it is."""
    modes = [(m, m.training) for m in net.modules()] if isinstance(net, torch.nn.Module) else []
    if modes:
        net.eval()
    try:
        yield net
    finally:
        for m, training in modes:
            m.training = training


class Evaluator:
    """Evaluation settings of a config (``eval_crop``, ``eval_scales``, ``eval_flip``, ``eval_batch``,
    ``num_classes``, ``eval_amp``, ``channels_last``) bound to a device.

    Class names and palette (for the results and the saved predictions): ``class_names`` / ``palette``
    when given, else those of ``layout`` (default :func:`~furnace.datasets.layouts.layout_of` ``(cfg)``)
    by :func:`~furnace.datasets.layouts.classes_and_palette`.
    """

    def __init__(self, cfg, device: torch.device | str | None = None, class_names=None, palette=None, *,
                 layout: DatasetLayout | None = None):
        self.num_classes = int(cfg.num_classes)
        self.crop = int(cfg.eval_crop)
        self.stride = window_stride(self.crop) if self.crop > 0 else 0
        self.scales = [float(s) for s in cfg.eval_scales]
        self.flip = bool(cfg.eval_flip)
        self.batch = int(cfg.eval_batch)
        self.num_workers = int(cfg.get("num_workers", 0))
        self.device = torch.device(device) if device is not None else dist.resolve_device(cfg.get("device", "auto"))
        self.dtype = dist.amp_choice(cfg.get("eval_amp", "none"), self.device, "eval_amp")[0]
        self.channels_last = bool(cfg.get("channels_last", False)) and self.device.type == "cuda"
        if class_names is None or palette is None:
            names, pal = classes_and_palette(layout if layout is not None else layout_of(cfg), self.num_classes)
            class_names = names if class_names is None else class_names
            palette = pal if palette is None else palette
        self.class_names = list(class_names)
        self.palette = np.asarray(palette, np.uint8)

    def _forward(self, network, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = network(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float()
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if out.shape[1] != self.num_classes:
            raise UserError(f"the network predicts {out.shape[1]} classes but config num_classes="
                            f"{self.num_classes}; evaluate with the matching dataset/num_classes")
        return out

    def _window_logits(self, network, windows: torch.Tensor) -> torch.Tensor:
        """(N,3,crop,crop) windows -> (N,C,crop,crop) logits, plus the mirrored windows' logits mirrored
        back when ``eval_flip``."""
        out = self._forward(network, windows)
        if self.flip:
            out = out + self._forward(network, windows.flip(-1)).flip(-1)
        return out

    def sliding_logits(self, network, x: torch.Tensor) -> torch.Tensor:
        """(1,3,H,W) normalised image -> (1,C,H,W) logits averaged over the sliding windows (each
        window's logits include its mirrored pass when ``eval_flip``); the whole image in one pass when
        ``eval_crop`` is 0."""
        if self.crop <= 0:
            return self._window_logits(network, x)
        h, w = x.shape[-2:]
        top, bottom, left, right = center_pad(h, w, self.crop)
        xp = F.pad(x, (left, right, top, bottom), value=0.0)
        windows = sliding_windows(h, w, self.crop, self.stride)
        acc = torch.zeros((1, self.num_classes, *xp.shape[-2:]), device=x.device)
        count = torch.zeros((1, 1, *xp.shape[-2:]), device=x.device)
        for i in range(0, len(windows), self.batch):
            chunk = windows[i:i + self.batch]
            out = self._window_logits(network, torch.cat([xp[..., y0:y1, x0:x1] for y0, y1, x0, x1 in chunk]))
            for (y0, y1, x0, x1), o in zip(chunk, out):
                acc[..., y0:y1, x0:x1] += o
                count[..., y0:y1, x0:x1] += 1
        return (acc / count)[..., top:top + h, left:left + w]

    @torch.no_grad()
    def predict(self, network, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB image -> (C,H,W) float32 raw logits summed over the scales (see the module doc).

        ``network`` maps (B,3,h,w) normalised images to (B,C,h,w) logits and is used as it is (the
        caller puts it in eval mode).
        """
        import cv2

        h, w = image.shape[:2]
        total = None
        for s in self.scales:
            img = image
            if s != 1.0:
                size = (max(1, round(w * s)), max(1, round(h * s)))
                img = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            x = torch.from_numpy(normalize(img)).permute(2, 0, 1)[None].to(self.device)
            logits = self.sliding_logits(network, x)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total = logits[0] if total is None else total + logits[0]
        return total

    def run(self, network, dataset, save_pred_dir=None, progress: bool = False) -> dict:
        """Evaluate ``network`` on ``dataset`` (items ``{"image","label","name"}``), sharded over ranks.

        Returns :func:`metrics_from_confusion` of the confusion matrix summed over processes. With
        ``save_pred_dir``, writes ``index/<name>.png`` (class indices) and ``color/<name>.png``
        (palette colours). The network's train/eval modes are restored afterwards and the global
        random generators are left untouched.
        """
        rank, world = dist.get_rank(), dist.get_world_size()
        indices = list(range(rank, len(dataset), world))
        conf = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=self.device)
        out_dir = Path(save_pred_dir) if save_pred_dir else None
        if out_dir is not None:
            (out_dir / "index").mkdir(parents=True, exist_ok=True)
            (out_dir / "color").mkdir(parents=True, exist_ok=True)
        with eval_mode(network), preserved_cpu_rng():
            loader = torch.utils.data.DataLoader(
                _Samples(dataset, indices), batch_size=None, collate_fn=_identity,
                num_workers=min(self.num_workers, len(indices)),
            )
            if progress and dist.is_main():
                from tqdm import tqdm

                loader = tqdm(loader, total=len(indices), desc="eval", dynamic_ncols=True, mininterval=1.0)
            for sample in loader:
                sample = raise_item_error(sample)
                pred = self.predict(network, sample["image"]).argmax(0)
                gt = torch.from_numpy(np.asarray(sample["label"])).to(self.device)
                if gt.shape != pred.shape:
                    raise UserError(f"val image {sample.get('name', '?')}: label size {tuple(gt.shape)} "
                                    f"differs from image size {tuple(pred.shape)}; run the dataset check")
                conf += confusion_matrix(pred, gt, self.num_classes)
                if out_dir is not None:
                    self._save_prediction(out_dir, sample["name"], pred.to(torch.uint8).cpu().numpy())
        conf = dist.all_reduce_sum(conf)
        return metrics_from_confusion(conf.cpu().numpy(), self.class_names)

    def _save_prediction(self, out_dir: Path, name: str, pred: np.ndarray) -> None:
        import cv2

        stem = _safe_name(name)
        cv2.imwrite(str(out_dir / "index" / f"{stem}.png"), pred)
        color = colorize(pred, self.palette)
        cv2.imwrite(str(out_dir / "color" / f"{stem}.png"), color[..., ::-1].copy())
