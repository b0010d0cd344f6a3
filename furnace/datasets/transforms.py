"""Training augmentation of SPEC §3 as plain functions on numpy arrays (cv2), randomness from a Generator.

Order: horizontal flip (p = 0.5) → random scale (image bilinear, label nearest) → ImageNet
normalisation (RGB) → random crop with offsets in [0, side − crop], centred padding where the image is
smaller (image 0 after normalisation, label 255). Normalisation is per pixel, so it can be applied
after the crop: the result is identical and far cheaper at large scales.

The training loader stops at :func:`augment` (uint8 crop + the box of real pixels) and normalises on
the training device (:func:`furnace.datasets.device.to_device`) with the same 256-entry table as
:func:`normalize`, so both give bit-identical values; :func:`train_transform` is the all-CPU
composition of the two.
"""

from __future__ import annotations

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
    """Resize by a factor drawn uniformly from ``scales``: image bilinear, label nearest.

    The new size is ``int(side * s)`` per axis (truncated, as the original; at least 1).
    Returns ``(image, label, s)``.
    """
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
    """(source slice, destination slice) along one axis: a random crop when the image is at least
    ``crop`` long (offset in [0, side - crop]), otherwise the whole side centred in the output."""
    offset = int(rng.integers(0, max(side - crop, 0) + 1))
    if side >= crop:
        return slice(offset, offset + crop), slice(0, crop)
    before = (crop - side) // 2
    return slice(0, side), slice(before, before + side)


def crop_pad(image: np.ndarray, label: np.ndarray | None, crop, rng: np.random.Generator, ignore_index: int = 255,
             *, out: np.ndarray | None = None, out_label: np.ndarray | None = None):
    """Random-crop / centre-pad to ``crop`` (int or (h, w)) without normalising.

    Returns image (ch, cw, 3) uint8 (padding 0), label (ch, cw) uint8 (padding ``ignore_index``) or
    None, and ``valid = (y0, x0, y1, x1)``: the box holding real pixels (outside it the normalised
    image must be 0). ``out`` / ``out_label``, when given, are filled and returned instead of new
    arrays (the loader writes straight into its batch buffers: one copy per pixel).
    """
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


def crop_normalize(
    image: np.ndarray, label: np.ndarray | None, crop, rng: np.random.Generator, ignore_index: int = IGNORE_INDEX
):
    """Normalise and random-crop / centre-pad to ``crop`` (int or (h, w)).

    Returns image (ch, cw, 3) float32 (padding 0 = the mean colour) and label (ch, cw) uint8
    (padding ``ignore_index``) or None.
    """
    image, out_label, (y0, x0, y1, x1) = crop_pad(image, label, crop, rng, ignore_index)
    out = np.zeros(image.shape, np.float32)
    out[y0:y1, x0:x1] = normalize(image[y0:y1, x0:x1])
    return out, out_label


def augment(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, *, crop_size, scales, ignore_index: int = 255,
    out: np.ndarray | None = None, out_label: np.ndarray | None = None,
):
    """Flip, scale and crop of one sample on uint8 (what the loader's workers do).

    Returns ``(image (crop, crop, 3) uint8, label (crop, crop) uint8 or None, valid box (y0, x0, y1,
    x1))``, written into ``out`` / ``out_label`` when given. Draws from ``rng`` in a fixed order:
    flip, scale, crop offsets.
    """
    image, label = hflip(image, label, rng)
    image, label, _ = random_scale(image, label, rng, scales)
    return crop_pad(image, label, crop_size, rng, ignore_index, out=out, out_label=out_label)


def train_transform(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, *, crop_size, scales, ignore_index: int = IGNORE_INDEX
):
    """The full SPEC §3 training augmentation of one sample.

    image (H, W, 3) uint8 RGB, label (H, W) uint8 or None -> image (crop, crop, 3) float32 normalised,
    label (crop, crop) uint8 or None: :func:`augment` then :func:`normalize` inside the valid box.
    """
    image, label, (y0, x0, y1, x1) = augment(image, label, rng, crop_size=crop_size, scales=scales,
                                             ignore_index=ignore_index)
    out = np.zeros(image.shape, np.float32)
    out[y0:y1, x0:x1] = normalize(image[y0:y1, x0:x1])
    return out, label
