"""CutMix box masks for the unlabeled pair (SPEC §3).

Per sample, ``n_boxes`` boxes toggle (XOR) a mask that starts at 0; 1 = take the pixel from the second unlabeled
image. A box has area fraction p ~ U(area) and sides h = p^u, w = p / h (u ~ U(0, 1), fractions of the image
sides), both scaled by sqrt(1/3). It lies inside the image at ``round((side - box) * U(0, 1))`` per axis, as the
original (so the two end positions are half as likely as each interior one). Three boxes with p ~ U(0.25, 0.5)
cover ~0.25 of the image on average.
"""

from __future__ import annotations

import math

import numpy as np

_SIDE_SCALE = math.sqrt(1.0 / 3.0)


def box_mask(size, rng: np.random.Generator, n_boxes: int = 3, area=(0.25, 0.5)) -> np.ndarray:
    """One (h, w) float32 mask in {0, 1} for ``size`` = (h, w); draws p, u, top, left per box, in this order."""
    h, w = size
    mask = np.zeros((h, w), np.bool_)
    for _ in range(n_boxes):
        p = rng.uniform(area[0], area[1])
        frac_h = p ** rng.uniform(0.0, 1.0)
        box_h = min(h, int(round(frac_h * _SIDE_SCALE * h)))
        box_w = min(w, int(round(p / frac_h * _SIDE_SCALE * w)))
        top = int(np.round((h - box_h) * rng.uniform(0.0, 1.0)))
        left = int(np.round((w - box_w) * rng.uniform(0.0, 1.0)))
        mask[top : top + box_h, left : left + box_w] ^= True
    return mask.astype(np.float32)
