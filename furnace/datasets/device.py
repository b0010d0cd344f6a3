"""The batch on the training device: uint8 from the loader (4x fewer bytes than float32), normalised there with
:data:`furnace.runtime.images.NORMALIZE_LUT`, so the values are bit-identical to normalising on the CPU."""

import functools

import torch

from .batch import BOX_OF, BOXES, IMAGES, LABELS, MASKS
from ..runtime.images import NORMALIZE_LUT


@functools.cache
def _table(device: str) -> torch.Tensor:
    """(3 * 256,) float32 on ``device``: entry ``c * 256 + v`` is NORMALIZE_LUT[0, v, c]."""
    return torch.from_numpy(NORMALIZE_LUT[0].T.reshape(-1).copy()).to(device)


def normalize_images(images: torch.Tensor, valid: torch.Tensor | None = None, *,
                     channels_last: bool = False) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 ImageNet-normalised; 0 outside each image's ``valid`` (y0, x0, y1, x1) box."""
    offsets = torch.arange(0, 3 * 256, 256, device=images.device).view(1, 3, 1, 1)
    out = _table(str(images.device))[images.long() + offsets]
    if valid is not None:
        valid = valid.to(images.device, torch.int64)
        rows = torch.arange(images.shape[2], device=images.device)
        cols = torch.arange(images.shape[3], device=images.device)
        in_y = (rows[None] >= valid[:, :1]) & (rows[None] < valid[:, 2:3])  # (B, H)
        in_x = (cols[None] >= valid[:, 1:2]) & (cols[None] < valid[:, 3:4])  # (B, W)
        inside = (in_y[:, :, None] & in_x[:, None, :])[:, None]
        out = torch.where(inside, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def to_device(batch: dict, device, *, channels_last: bool = False) -> dict:
    """The batch on ``device`` for the methods: images normalised float32, labels int64, the mask float32."""
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
                value = normalize_images(value, batch.get(BOX_OF[key]), channels_last=channels_last)
            elif channels_last:
                value = value.contiguous(memory_format=torch.channels_last)
        elif key in LABELS and value.dtype in (torch.uint8, torch.int16):
            value = value.long()
        elif key in MASKS and value.dtype == torch.uint8:
            value = value.float()
        out[key] = value
    return out
