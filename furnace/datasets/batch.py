"""The training batch contract: the key names the methods read, what each holds, and a synthetic batch.

From :class:`~furnace.datasets.TrainLoader`, with B crops of c x c pixels: :data:`IMAGES` (the labeled ``image_l``,
the unlabeled pair ``image_u0``, ``image_u1``) (B, 3, c, c) uint8 RGB viewed channels-last; their :data:`BOXES`
(:data:`BOX_OF`) (B, 4) int32 ``(y0, x0, y1, x1)`` of real pixels; :data:`LABELS` (B, c, c) uint8, 255 = ignore;
:data:`MASKS` (B, 1, c, c) uint8 CutMix mask, 1 = pixel from ``image_u1``. A labeled-only batch holds
:data:`LABELED_KEYS`. On the device (:func:`~furnace.datasets.device.to_device`): images float32 normalised, 0
outside the box (boxes dropped), labels int64, the mask float32.
"""

import math

import torch

IMAGE_L, IMAGE_U0, IMAGE_U1 = "image_l", "image_u0", "image_u1"
VALID_L, VALID_U0, VALID_U1 = "valid_l", "valid_u0", "valid_u1"
LABEL_L, MASK_MIX = "label_l", "mask_mix"

IMAGES = (IMAGE_L, IMAGE_U0, IMAGE_U1)
BOX_OF = {IMAGE_L: VALID_L, IMAGE_U0: VALID_U0, IMAGE_U1: VALID_U1}
BOXES = tuple(BOX_OF.values())
LABELS = (LABEL_L,)
MASKS = (MASK_MIX,)
LABELED_KEYS = (IMAGE_L, LABEL_L, VALID_L)


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 while every class id and the ignore value 255 fit (up to 256 classes), else int16."""
    return torch.uint8 if num_classes <= 256 else torch.int16


def batch_specs(micro_batch: int, crop: int, labels: torch.dtype = torch.uint8, *, unlabeled: bool = True) -> dict:
    """``{key: (shape, dtype)}`` of one micro-batch's buffers as they are filled (images HWC)."""
    n, c = micro_batch, crop
    specs = {LABEL_L: ((n, c, c), labels)}
    for image in IMAGES if unlabeled else (IMAGE_L,):
        specs[image] = ((n, c, c, 3), torch.uint8)
        specs[BOX_OF[image]] = ((n, 4), torch.int32)
    if unlabeled:
        specs[MASK_MIX] = ((n, 1, c, c), torch.uint8)
    return specs


def allocate(specs: dict) -> dict:
    """Tensors of ``specs`` carved from one buffer: one shared-memory segment when a worker hands the batch over."""
    sizes = {key: math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
             for key, (shape, dtype) in specs.items()}
    offsets, total = {}, 0
    for key, size in sizes.items():
        offsets[key], total = total, total + -(-size // 8) * 8  # 8-byte aligned
    buffer = torch.empty(total, dtype=torch.uint8)
    return {key: buffer[offsets[key]:offsets[key] + sizes[key]].view(dtype).view(shape)
            for key, (shape, dtype) in specs.items()}


def as_batch(buffers: dict) -> dict:
    """Filled buffers -> the batch: HWC image buffers viewed as (B, 3, c, c), i.e. channels-last."""
    return {key: value.permute(0, 3, 1, 2) if key in IMAGES else value for key, value in buffers.items()}


def synthetic_batch(micro_batch: int, crop: int, num_classes: int, *, seed: int = 0, unlabeled: bool = True) -> dict:
    """A random batch in the loader's format without padding, the mask's central box from ``image_u1``."""
    g = torch.Generator().manual_seed(seed)
    buffers = {}
    for key, (shape, dtype) in batch_specs(micro_batch, crop, label_dtype(num_classes), unlabeled=unlabeled).items():
        if key in IMAGES:
            buffers[key] = torch.randint(0, 256, shape, generator=g, dtype=dtype)
        elif key in LABELS:
            buffers[key] = torch.randint(0, num_classes, shape, generator=g, dtype=dtype)
        elif key in BOXES:
            buffers[key] = torch.tensor([[0, 0, crop, crop]] * micro_batch, dtype=dtype)
        else:
            buffers[key] = torch.zeros(shape, dtype=dtype)
            buffers[key][..., crop // 4: 3 * crop // 4, crop // 4: 3 * crop // 4] = 1
    return as_batch(buffers)
