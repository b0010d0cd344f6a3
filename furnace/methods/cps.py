"""Cross pseudo supervision with CutMix (SPEC §5): how the teachers are trained, and a student baseline."""
from __future__ import annotations

import torch

from ..datasets.batch import IMAGE_L, IMAGE_U0, IMAGE_U1, LABEL_L, MASK_MIX
from ..losses import cps_loss, cutmix_pseudo_label, mix_by_mask
from .base import Method, build_network, check_pretrained


class CPS(Method):
    """Two networks P1, P2 of one architecture (independent head inits) teach each other.

    L = L_sup(P1(x_l), y) + L_sup(P2(x_l), y) + λ_cps · [CE(P1(x_m), ŷ2) + CE(P2(x_m), ŷ1)],
    ŷk = argmax[(1 − M)·Pk(u0) + M·Pk(u1)] computed without gradient, x_m = (1 − M)·u0 + M·u1.
    The saved (exported) teacher is P1 = ``branch1``.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        check_pretrained(cfg)
        self.branch1 = build_network(cfg)
        self.branch2 = build_network(cfg)

    def forward(self, batch):
        x_l, y = batch[IMAGE_L], batch[LABEL_L]
        u0, u1, mask = batch[IMAGE_U0], batch[IMAGE_U1], batch[MASK_MIX]
        with torch.no_grad():
            pseudo1 = cutmix_pseudo_label(self.branch1(u0), self.branch1(u1), mask)
            pseudo2 = cutmix_pseudo_label(self.branch2(u0), self.branch2(u1), mask)
        x_m = mix_by_mask(u0, u1, mask)
        sup = self.supervised_loss(self.branch1(x_l), y) + self.supervised_loss(self.branch2(x_l), y)
        cps = cps_loss(self.branch1(x_m), self.branch2(x_m), pseudo1, pseudo2)
        return {"loss": sup + self.cfg.lambda_cps * cps, "sup": sup, "cps": cps}

    def eval_network(self):
        return self.branch1

    def on_train_end(self, cfg):
        """Export P1 as the teacher file the student configs point to (cfg.export_teacher)."""
        from ..engine.evaluator import segmentor_meta
        from ..models import save_segmentor

        save_segmentor(
            self.branch1,
            cfg.export_teacher,
            extra={"method": "cps", "labeled_ratio": cfg.labeled_ratio, **segmentor_meta(cfg)},
        )
        print(f"exported teacher {cfg.arch} -> {cfg.export_teacher}")
