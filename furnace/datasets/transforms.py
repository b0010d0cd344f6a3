"""Training augmentation of SPEC §3 as plain functions on numpy arrays (cv2), randomness from a Generator: flip
(p = 0.5), random scale, random crop with centred padding, then ImageNet normalisation (per pixel, so after the crop:
identical, far cheaper). The loader stops at uint8 :func:`augment` and normalises on the device with the same
table, bit-identical to :func:`train_transform`, the all-CPU composition.
"""

import cv2
import numpy as np

from ..runtime.images import normalize  # noqa: F401 - re-exported: evaluation and the runtime share it
from ..utils import IGNORE_INDEX


def hflip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, p: float = 0.5):
    """Mirror image (H, W, C) and label (H, W) left-right together with probability ``p``."""
    if rng.random() < p:
        image = cv2.flip(image, 1)
        label = None if label is None else cv2.flip(label, 1)
    return image, label


def random_scale(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, scales):
    """``(image, label, s)`` resized by s from ``scales`` to ``max(1, int(side * s))``: bilinear, label nearest."""
    s = float(scales[rng.integers(len(scales))])
    if s == 1.0:
        return image, label, s
    h, w = image.shape[:2]
    size = (max(1, int(w * s)), max(1, int(h * s)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return image, label, s


def _axis_window(side: int, crop: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """(source, destination) slices along one axis: a random crop, or the whole side centred when shorter."""
    offset = int(rng.integers(0, max(side - crop, 0) + 1))
    if side >= crop:
        return slice(offset, offset + crop), slice(0, crop)
    before = (crop - side) // 2
    return slice(0, side), slice(before, before + side)


def crop_pad(image: np.ndarray, label: np.ndarray | None, crop, rng: np.random.Generator,
             ignore_index: int = IGNORE_INDEX, *, out: np.ndarray | None = None, out_label: np.ndarray | None = None):
    """Random-crop / centre-pad to ``crop`` (int or (h, w)): image, label (padding 0 / ``ignore_index``) and the box
    ``(y0, x0, y1, x1)`` of real pixels, written into ``out`` / ``out_label`` when given (one copy per pixel)."""
    ch, cw = (crop, crop) if np.isscalar(crop) else crop
    h, w = image.shape[:2]
    src_y, dst_y = _axis_window(h, ch, rng)
    src_x, dst_x = _axis_window(w, cw, rng)
    valid = (dst_y.start, dst_x.start, dst_y.stop, dst_x.stop)
    padded = valid != (0, 0, ch, cw)
    out = np.empty((ch, cw, 3), np.uint8) if out is None else out
    if padded:
        out[...] = 0
    out[dst_y, dst_x] = image[src_y, src_x]
    if label is not None:
        out_label = np.empty((ch, cw), np.uint8) if out_label is None else out_label
        if padded:
            out_label[...] = ignore_index
        out_label[dst_y, dst_x] = label[src_y, src_x]
    return out, (None if label is None else out_label), valid


def crop_normalize(image: np.ndarray, label: np.ndarray | None, crop, rng: np.random.Generator,
                   ignore_index: int = IGNORE_INDEX):
    """:func:`crop_pad`, then ``(image, label)`` with the image float32, normalised in the box and 0 outside."""
    image, out_label, (y0, x0, y1, x1) = crop_pad(image, label, crop, rng, ignore_index)
    out = np.zeros(image.shape, np.float32)
    out[y0:y1, x0:x1] = normalize(image[y0:y1, x0:x1])
    return out, out_label


def augment(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, *, crop_size, scales,
            ignore_index: int = IGNORE_INDEX, out: np.ndarray | None = None, out_label: np.ndarray | None = None):
    """Flip, scale, then :func:`crop_pad` on uint8 (the loader workers' part): ``(image, label, valid)``."""
    image, label = hflip(image, label, rng)
    image, label, _ = random_scale(image, label, rng, scales)
    return crop_pad(image, label, crop_size, rng, ignore_index, out=out, out_label=out_label)


def train_transform(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, *, crop_size, scales,
                    ignore_index: int = IGNORE_INDEX):
    """SPEC §3 augmentation: (H, W, 3) uint8, (H, W) or None -> normalised float32 crop, label crop or None."""
    image, label = hflip(image, label, rng)
    image, label, _ = random_scale(image, label, rng, scales)
    return crop_normalize(image, label, crop_size, rng, ignore_index)
