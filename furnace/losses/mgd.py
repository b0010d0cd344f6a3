"""The three granularities of MGD's distillation: image, region and pixel level."""
import torch
import torch.nn.functional as F

from .segmentation import cross_entropy


def semantic_sensitive_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Image-level semantic-sensitive loss.

    g(z) = spatial mean of the logits z (B, C, H, W) -> (B, C) class vector per image;
    L = (1/B) Σ_b Σ_c |g(S)_bc − g(T)_bc|   (L1 summed over classes, mean over images).
    The teacher side carries no gradient.
    """
    g_s = student_logits.float().mean(dim=(2, 3))
    g_t = teacher_logits.detach().float().mean(dim=(2, 3))
    return (g_s - g_t).abs().sum(dim=1).mean()


def _region_self_similarity(feat: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, D, h, w) -> (B, grid², grid²) cosine similarities between the grid×grid pooled regions."""
    regions = F.adaptive_avg_pool2d(feat.float(), grid).flatten(2).transpose(1, 2)  # (B, grid², D)
    regions = F.normalize(regions, dim=2)
    return regions @ regions.transpose(1, 2)


def content_aware_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, grid: int = 7) -> torch.Tensor:
    """Region-level content-aware loss.

    Each feature map (B, D, h, w) is adaptive-average-pooled to grid×grid regional vectors r_i;
    A_ij = cos(r_i, r_j) is the (grid², grid²) self-similarity matrix of a network;
    L = mean over batch and entries of (A^S − A^T)². Channel counts of the two maps may differ.
    The teacher side carries no gradient.
    """
    a_s = _region_self_similarity(student_feat, grid)
    a_t = _region_self_similarity(teacher_feat.detach(), grid)
    return F.mse_loss(a_s, a_t)


def pixel_consistency_loss(student_logits: torch.Tensor, pseudo_label: torch.Tensor) -> torch.Tensor:
    """Pixel-level consistency: CE(S, ŷ_T) with ŷ_T a teacher's hard label map (B, H, W).

    Averaged per image, then over the images, like :func:`furnace.losses.cross_entropy`.

    For labeled images ŷ_T = argmax T(x_l) (:func:`furnace.losses.hard_pseudo_label`); for the CutMix image
    ŷ_T = argmax[(1 − M)·T(u0) + M·T(u1)] (:func:`furnace.losses.cutmix_pseudo_label`).
    """
    return cross_entropy(student_logits, pseudo_label)
