"""Loss functions of MGD-SSSS: pure tensor functions, no state, no distributed code.

Shapes: logits (B, C, H, W) at label resolution, labels (B, H, W) int64 with ``ignore_index`` for void,
features (B, D, h, w), CutMix masks (B, 1, H, W) in {0, 1}. Every loss returns a 0-dim float32 tensor
(computed in float32 whatever the autocast dtype of its inputs).
"""
from .segmentation import cross_entropy, mean_per_image, ohem_cross_entropy, supervised_loss
from .cps import cps_loss, cutmix_pseudo_label, hard_pseudo_label, mix_by_mask
from .mgd import content_aware_loss, pixel_consistency_loss, semantic_sensitive_loss

__all__ = [
    "cross_entropy",
    "mean_per_image",
    "ohem_cross_entropy",
    "supervised_loss",
    "cps_loss",
    "cutmix_pseudo_label",
    "hard_pseudo_label",
    "mix_by_mask",
    "content_aware_loss",
    "pixel_consistency_loss",
    "semantic_sensitive_loss",
]
