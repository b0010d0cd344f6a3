"""Supervised segmentation losses: cross-entropy with ignore, and online hard example mining (OHEM)."""
import torch
import torch.nn.functional as F

from ..utils import IGNORE_INDEX


def mean_per_image(per_pixel_loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over each image's valid pixels, then mean over the images given.

    ``per_pixel_loss`` (B, H, W) float, ``valid`` (B, H, W) bool. L = (1/B) Σ_b (1/|V_b|) Σ_{p∈V_b} l_bp.
    An image with no valid pixel contributes 0 but still counts in B, so the loss of a batch equals the
    sum of its micro-batches' losses each weighted by its share of the images: the value and the
    gradient do not depend on how a global batch is split over processes and micro-batches.
    """
    per_pixel_loss = torch.where(valid, per_pixel_loss, torch.zeros_like(per_pixel_loss))
    n_valid = valid.flatten(1).sum(1).clamp(min=1)
    return (per_pixel_loss.flatten(1).sum(1) / n_valid).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy averaged over each image's valid pixels, then over the images (:func:`mean_per_image`).

    L = (1/B) Σ_b -(1/|V_b|) Σ_{p∈V_b} log softmax(logits_bp)[target_bp],  V_b = {p : target_bp ≠ ignore}.
    Equal to the pooled pixel mean when every image has the same number of ignored pixels. Returns 0
    (with a graph to ``logits``) when every pixel is ignored, where the plain mean would be NaN.
    """
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    return mean_per_image(per_pixel, target != ignore_index)


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
    at most ``min_kept``); the loss is the CE mean over each image's kept pixels, then over the images.

    The original selected once over the pooled pixels of its per-GPU batch, with ``min_kept``
    proportional to the images in it (50,000 per image), and averaged over all kept pixels of that
    batch. Selecting and averaging per image, with ``min_kept`` per image, is the form of that rule
    that does not depend on how the global batch is split over GPUs and micro-batches.
    """
    logits = logits.float()
    keep = _ohem_keep(logits.detach(), target, thresh, min_kept, ignore_index)
    per_pixel = F.cross_entropy(logits, torch.where(keep, target, torch.zeros_like(target)), reduction="none")
    return mean_per_image(per_pixel, keep)


@torch.no_grad()
def _ohem_keep(logits, target, thresh, min_kept, ignore_index) -> torch.Tensor:
    """(B, H, W) bool: the pixels OHEM keeps, selected per image (see :func:`ohem_cross_entropy`)."""
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
    return valid & (prob <= thr.view(-1, 1, 1))


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", ohem_thresh: float = 0.7,
                    ohem_min_kept: int = 50000) -> torch.Tensor:
    """The supervised loss ``kind``: "ce" (VOC) or "ohem" (Cityscapes, with its threshold and minimum kept)."""
    if kind == "ohem":
        return ohem_cross_entropy(logits, target, ohem_thresh, ohem_min_kept)
    if kind == "ce":
        return cross_entropy(logits, target)
    raise ValueError(f"unknown supervised loss {kind!r} (ce | ohem)")
