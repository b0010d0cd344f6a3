"""The batch on the training device: uint8 from the loader, normalised here.

The loader's workers hand over the keys of :mod:`furnace.datasets.batch`: images (B, 3, h, w) uint8
(a channels-last view of HWC crops), labels uint8 (int16 above 256 classes), the CutMix mask
(B, 1, h, w) uint8 and, per image, its valid box (B, 4) int32 ``(y0, x0, y1, x1)`` of real pixels.
:func:`to_device` moves them (4x fewer bytes than float32) and normalises on the device with the same
256-entry table as :func:`furnace.datasets.transforms.normalize`, zeroing the padding, so the values are
bit-identical to normalising on the CPU. Float batches (tests, benchmarks) pass through unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .batch import BOX_OF, BOXES, IMAGES, LABELS, MASKS

_TABLES: dict = {}


def normalize_table(device, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(3 * 256,) float32 on ``device``: entry ``c * 256 + v`` is ``(v / 255 - mean[c]) / std[c]``,
    computed in float64 and rounded once, exactly as the CPU table."""
    key = (str(device), tuple(mean), tuple(std))
    if key not in _TABLES:
        values = (np.arange(256, dtype=np.float64)[None, :] / 255.0 - np.array(mean)[:, None]) / np.array(std)[:, None]
        _TABLES[key] = torch.from_numpy(values.astype(np.float32).reshape(-1)).to(device)
    return _TABLES[key]


def normalize_images(images: torch.Tensor, valid: torch.Tensor | None = None, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, *, channels_last: bool = False) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 ImageNet-normalised; 0 outside each image's ``valid`` box."""
    table = normalize_table(images.device, mean, std)
    offsets = torch.arange(0, 3 * 256, 256, device=images.device).view(1, 3, 1, 1)
    out = table[images.long() + offsets]
    if valid is not None:
        valid = valid.to(images.device, torch.int64)
        rows = torch.arange(images.shape[2], device=images.device)
        cols = torch.arange(images.shape[3], device=images.device)
        in_y = (rows[None] >= valid[:, :1]) & (rows[None] < valid[:, 2:3])  # (B, H)
        in_x = (cols[None] >= valid[:, 1:2]) & (cols[None] < valid[:, 3:4])  # (B, W)
        inside = (in_y[:, :, None] & in_x[:, None, :])[:, None]
        out = torch.where(inside, out, torch.zeros((), dtype=out.dtype, device=out.device))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def to_device(batch: dict, device, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, channels_last: bool = False) -> dict:
    """The batch on ``device`` as the methods consume it: images float32 normalised (channels-last
    when asked), labels int64, the CutMix mask float32 in {0, 1}; the valid boxes are used and
    dropped. Tensors already float pass through (moved, and made channels-last when asked)."""
    device = torch.device(device)
    out = {}
    for key, value in batch.items():
        if key in BOXES:
            continue
        if not torch.is_tensor(value):
            out[key] = value
            continue
        value = value.to(device, non_blocking=True)
        if key in IMAGES and value.ndim == 4:
            if value.dtype == torch.uint8:
                value = normalize_images(value, batch.get(BOX_OF[key]), mean, std, channels_last=channels_last)
            elif channels_last:
                value = value.contiguous(memory_format=torch.channels_last)
        elif key in LABELS and value.dtype in (torch.uint8, torch.int16):
            value = value.long()
        elif key in MASKS and value.dtype == torch.uint8:
            value = value.float()
        out[key] = value
    return out
