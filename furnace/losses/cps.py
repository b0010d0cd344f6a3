"""Cross pseudo supervision (CPS) with CutMix, and the pseudo-label helpers MGD shares with it."""
import torch

from .segmentation import cross_entropy


def mix_by_mask(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CutMix two tensors: (1 − M)·a + M·b, with M (B, 1, H, W) in {0, 1} broadcast over channels.

    Used for images (x_m from u0, u1) and for logit maps (a network's prediction of the mixed image
    assembled from its predictions of u0 and u1). ``mask`` must have a's spatial size.
    """
    mask = mask.to(a.dtype)
    return a * (1 - mask) + b * mask


def hard_pseudo_label(logits: torch.Tensor) -> torch.Tensor:
    """Hard pseudo-label: argmax over classes, (B, C, H, W) -> (B, H, W) int64, no threshold."""
    return logits.argmax(dim=1)


def cutmix_pseudo_label(logits_u0: torch.Tensor, logits_u1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pseudo-label of the CutMix image: argmax[(1 − M)·T(u0) + M·T(u1)] -> (B, H, W) int64."""
    return hard_pseudo_label(mix_by_mask(logits_u0, logits_u1, mask))


def cps_loss(
    logits_mix_1: torch.Tensor,
    logits_mix_2: torch.Tensor,
    pseudo_1: torch.Tensor,
    pseudo_2: torch.Tensor,
) -> torch.Tensor:
    """Cross pseudo supervision: CE(P1(x_m), ŷ2) + CE(P2(x_m), ŷ1).

    ``pseudo_k`` is network k's CutMix pseudo-label (:func:`cutmix_pseudo_label`, computed without
    gradient); each network learns from the other's.
    """
    return cross_entropy(logits_mix_1, pseudo_2) + cross_entropy(logits_mix_2, pseudo_1)
