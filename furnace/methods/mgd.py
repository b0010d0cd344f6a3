"""MGD (SPEC §6): a lightweight student distilled from a frozen deep and a frozen wide teacher."""
import torch

from ..datasets.batch import IMAGE_L, IMAGE_U0, IMAGE_U1, LABEL_L, MASK_MIX
from ..losses import (content_aware_loss, cutmix_pseudo_label, hard_pseudo_label, mix_by_mask,
                      pixel_consistency_loss, semantic_sensitive_loss)
from ..utils import UserError
from .base import Method, trained_network


class MGD(Method):
    """Multi-granularity distillation; only the terms that carry gradient to the student are computed.

    L = L_sup(S(x_l), y)
      + Σ_{T∈{T_D,T_W}} CE(S(x_l), argmax T(x_l))                     pixel level, labeled
      + Σ_{T∈{T_D,T_W}} CE(S(x_m), argmax[(1−M)·T(u0) + M·T(u1)])     pixel level, unlabeled
      + λ1 · semantic_sensitive(S(x_m), T_D(x_m))                     image level, deep teacher only
      + λ2 · content_aware(F_S(x_m), F_W(x_m))                        region level, wide teacher only

    The student's BN running statistics move with its passes on x_l and x_m; with
    ``student_bn_updates=original`` also with no-grad passes on u0 and u1 first, as the original's extra
    student passes did (order u0, u1, x_m, x_l). The losses and gradients are the same either way.
    """

    name = "mgd"
    teachers = {"teacher_deep": "resnet101", "teacher_wide": "wrn50_2"}
    keys = {
        "lambda_image": 0.004,  # λ1, semantic-sensitive (image level), mean over images
        "lambda_region": 100.0,  # λ2, content-aware (region level)
        "region_grid": 7,
        "student_bn_updates": "trained",  # trained | original (see the class docstring)
    }
    choices = {"student_bn_updates": ("trained", "original")}

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.region_grid < 1:
            raise UserError(f"config: region_grid={cfg.region_grid!r} must be positive")

    def __init__(self, cfg, device="cpu"):
        super().__init__(cfg, device)
        self.student = trained_network(cfg)

    def eval_network(self):
        return self.student

    def forward(self, batch):
        cfg = self.cfg
        x_l, y = batch[IMAGE_L], batch[LABEL_L]
        u0, u1, mask = batch[IMAGE_U0], batch[IMAGE_U1], batch[MASK_MIX]
        x_m = mix_by_mask(u0, u1, mask)
        deep = self.teachers["teacher_deep"](x_l, u0, u1, x_m)
        wide = self.teachers["teacher_wide"](x_l, u0, u1, x_m)

        if self.training and cfg.student_bn_updates == "original":
            with torch.no_grad():  # these passes only move the student's BN running statistics
                self.student(u0)
                self.student(u1)
            logits_m, feat_m = self.student(x_m, return_feature=True)
            logits_l = self.student(x_l)
        else:
            logits_l = self.student(x_l)
            logits_m, feat_m = self.student(x_m, return_feature=True)

        sup = self.supervised_loss(logits_l, y)
        pseudo_l = [hard_pseudo_label(t.logits[0]) for t in (deep, wide)]
        pseudo_m = [cutmix_pseudo_label(t.logits[1], t.logits[2], mask) for t in (deep, wide)]
        pixel_l = pixel_consistency_loss(logits_l, pseudo_l[0]) + pixel_consistency_loss(logits_l, pseudo_l[1])
        pixel_u = pixel_consistency_loss(logits_m, pseudo_m[0]) + pixel_consistency_loss(logits_m, pseudo_m[1])
        image = semantic_sensitive_loss(logits_m, deep.logits[3])
        region = content_aware_loss(feat_m, wide.features[3], cfg.region_grid)
        total = sup + pixel_l + pixel_u + cfg.lambda_image * image + cfg.lambda_region * region
        return {"loss": total, "sup": sup, "pixel_labeled": pixel_l, "pixel_unlabeled": pixel_u,
                "semantic_sensitive": image, "content_aware": region}
