"""CutMix box masks for the unlabeled pair (SPEC §3): 1 = take the pixel from the second unlabeled image.

``n_boxes`` boxes toggle (XOR) a mask of zeros. A box has area fraction p ~ U(area), sides p^u and p^(1-u) of the
image's (u ~ U(0, 1)) scaled by sqrt(1/3), at ``round((side - box) * U(0, 1))`` per axis as the original (the two
end positions half as likely as the others). 3 boxes, p ~ U(0.25, 0.5) cover ~0.25 of the image on average."""

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
