"""Supervised segmentation losses: cross-entropy with ignore, and online hard example mining (OHEM)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-mean cross-entropy over the pixels whose target is not ``ignore_index``.

    L = -(1/|V|) Σ_{p∈V} log softmax(logits_p)[target_p],  V = {p : target_p ≠ ignore}.
    Returns 0 (with a graph to ``logits``) when every pixel is ignored, where the plain mean would be NaN.
    """
    loss_sum = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    n_valid = (target != ignore_index).sum().clamp(min=1)
    return loss_sum / n_valid


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int = 50000,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (the Cityscapes supervised loss).

    Per image, with q_p the softmax probability of the true class at valid pixel p: keep the pixels with
    q_p ≤ max(thresh, the ``min_kept``-th smallest q in that image) (all valid pixels when the image has
    at most ``min_kept``); the loss is the CE mean over the kept pixels of the whole batch.
    """
    logits = logits.float()
    with torch.no_grad():
        valid = target != ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        prob = logits.softmax(dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        prob = torch.where(valid, prob, torch.full_like(prob, 2.0))  # never selected
        flat = prob.flatten(1)
        n_valid = valid.flatten(1).sum(1)
        k = torch.clamp(n_valid, max=min_kept).clamp(min=1)
        kth = flat.sort(dim=1).values.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
        thr = torch.clamp(kth, min=thresh)
        thr = torch.where(n_valid > min_kept, thr, torch.full_like(thr, 1.5))  # keep all valid
        keep = valid & (prob <= thr.view(-1, 1, 1))
        hard_target = torch.where(keep, target, torch.full_like(target, ignore_index))
    return cross_entropy(logits, hard_target, ignore_index)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", ohem_thresh: float = 0.7,
                    ohem_min_kept: int = 50000) -> torch.Tensor:
    """The supervised loss ``kind``: "ce" (VOC) or "ohem" (Cityscapes, with its threshold and minimum kept)."""
    if kind == "ohem":
        return ohem_cross_entropy(logits, target, ohem_thresh, ohem_min_kept)
    return cross_entropy(logits, target)
