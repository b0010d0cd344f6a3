"""CutMix box masks for the unlabeled pair (SPEC §3).

Per sample, ``n_boxes`` boxes toggle (XOR) a mask that starts at 0. Each box has area fraction
p ~ U(area) and a random aspect: h = p^u, w = p / h with u ~ U(0, 1) (fractions of the image height
and width), both sides scaled by sqrt(1/3), placed fully inside the image at ``round((side - box) * U(0, 1))`` per
axis, as the original (so the two end positions are half as likely as each interior one). Mask value 1 = take the
pixel from the second unlabeled image. With 3 boxes and p ~ U(0.25, 0.5) the mean coverage is ~0.25.
"""

from __future__ import annotations

import math

import numpy as np

_SIDE_SCALE = math.sqrt(1.0 / 3.0)


def _position(room: int, rng: np.random.Generator) -> int:
    """The original's box offset along one axis: round(room * U(0, 1)) in [0, room]."""
    return int(np.round(room * rng.uniform(0.0, 1.0)))


def box_mask(size, rng: np.random.Generator, n_boxes: int = 3, area=(0.25, 0.5)) -> np.ndarray:
    """One mask of ``size`` = (h, w) as float32 (h, w) with values in {0, 1}.

    Draws, per box and in this order: p, u, top, left from ``rng``.
    """
    h, w = size
    mask = np.zeros((h, w), np.bool_)
    for _ in range(n_boxes):
        p = rng.uniform(area[0], area[1])
        frac_h = p ** rng.uniform(0.0, 1.0)
        frac_w = p / frac_h
        box_h = min(h, int(round(frac_h * _SIDE_SCALE * h)))
        box_w = min(w, int(round(frac_w * _SIDE_SCALE * w)))
        top = _position(h - box_h, rng)
        left = _position(w - box_w, rng)
        mask[top : top + box_h, left : left + box_w] ^= True
    return mask.astype(np.float32)


def box_mask_from_cfg(size, rng: np.random.Generator, cfg) -> np.ndarray:
    """:func:`box_mask` with ``cfg.cutmix_boxes`` boxes and area range ``cfg.cutmix_area``."""
    return box_mask(size, rng, n_boxes=int(cfg.cutmix_boxes), area=tuple(cfg.cutmix_area))
