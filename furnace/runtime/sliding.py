"""Evaluation's prediction of one image (SPEC §8, :meth:`furnace.engine.evaluator.Evaluator.predict`) in
numpy: per scale the image is resized (cv2 bilinear) and normalised, windows of ``crop`` (centre-padded
with 0, stride ``ceil(2/3 crop)``) go through the network ``batch`` at a time, each window's logits plus
its mirrored window's mirrored back when ``flip``, overlapping windows averaged; the scales' raw logits,
resized to the image, are summed."""
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..utils import UserError
from .images import normalize
from .windows import center_pad, sliding_windows, window_stride

Network = Callable[[np.ndarray], np.ndarray]  # (B, 3, h, w) float32 -> (B, C, h, w) float32 logits


@dataclass(frozen=True)
class EvalSettings:
    """Window size (0 = the whole image in one pass), test scales, flip, windows per forward pass."""

    crop: int = 512
    scales: tuple = (1.0,)
    flip: bool = False
    batch: int = 4

    @classmethod
    def of(cls, recorded: dict | None, crop=None, whole=False, scales=None, flip=None, batch=4) -> "EvalSettings":
        """The settings a file ``recorded`` ({crop, scales, flip}), with the given overrides applied."""
        recorded = recorded or {}
        return cls(crop=0 if whole else int(crop or recorded.get("crop", 512)),
                   scales=tuple(float(s) for s in (scales or recorded.get("scales", [1.0]))),
                   flip=bool(recorded.get("flip", False) if flip is None else flip), batch=int(batch))


def scaled_input(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 normalised network input at ``scale`` (cv2 bilinear resize)."""
    if scale != 1.0:
        h, w = image.shape[:2]
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)
    return normalize(image).transpose(2, 0, 1)


def window_inputs(x: np.ndarray, crop: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]], tuple]:
    """``(padded, windows, pad)``: the (3, H, W) input centre-padded with 0 to at least ``crop`` per axis, the
    windows (y0, y1, x0, x1) of :func:`~furnace.runtime.windows.sliding_windows` in it, and the padding
    (top, bottom, left, right)."""
    h, w = x.shape[-2:]
    pad = center_pad(h, w, crop)
    padded = np.pad(x, ((0, 0), pad[:2], pad[2:]))
    return padded, sliding_windows(h, w, crop, window_stride(crop)), pad


def _window_logits(network: Network, windows: np.ndarray, flip: bool, num_classes: int) -> np.ndarray:
    out = network(windows)
    if out.shape[1] != num_classes:
        raise UserError(f"the network predicts {out.shape[1]} classes, not the {num_classes} its file records; "
                        f"export it again with `python -m furnace.tools.export`")
    if flip:
        out = out + network(np.ascontiguousarray(windows[..., ::-1]))[..., ::-1]
    return out


def sliding_logits(network: Network, x: np.ndarray, num_classes: int, settings: EvalSettings) -> np.ndarray:
    """(3, H, W) normalised input -> (C, H, W) logits averaged over the sliding windows."""
    if settings.crop <= 0:
        return _window_logits(network, x[None], settings.flip, num_classes)[0]
    h, w = x.shape[-2:]
    padded, windows, (top, _, left, _) = window_inputs(x, settings.crop)
    acc = np.zeros((num_classes, *padded.shape[-2:]), np.float32)
    count = np.zeros(padded.shape[-2:], np.float32)
    for i in range(0, len(windows), settings.batch):
        chunk = windows[i:i + settings.batch]
        batch = np.stack([padded[:, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
        for (y0, y1, x0, x1), out in zip(chunk, _window_logits(network, batch, settings.flip, num_classes)):
            acc[:, y0:y1, x0:x1] += out
            count[y0:y1, x0:x1] += 1
    return (acc / count)[:, top:top + h, left:left + w]


def predict_logits(network: Network, image: np.ndarray, num_classes: int, settings: EvalSettings) -> np.ndarray:
    """(H, W, 3) uint8 RGB image -> (C, H, W) float32 raw logits summed over ``settings.scales``."""
    h, w = image.shape[:2]
    total = None
    for scale in settings.scales:
        logits = sliding_logits(network, scaled_input(image, scale), num_classes, settings)
        if logits.shape[-2:] != (h, w):  # cv2 bilinear = torch's bilinear, align_corners=False
            logits = cv2.resize(logits.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR)
            logits = logits.reshape(h, w, -1).transpose(2, 0, 1)
        total = logits if total is None else total + logits
    return total
