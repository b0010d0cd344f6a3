"""Cross pseudo supervision with CutMix (SPEC §5): how the teachers are trained, and a student baseline."""
import torch

from ..datasets.batch import IMAGE_L, IMAGE_U0, IMAGE_U1, LABEL_L, MASK_MIX
from ..losses import cps_loss, cutmix_pseudo_label, mix_by_mask
from .base import Method, trained_network


class CPS(Method):
    """Two networks P1, P2 of one architecture (independent head inits) teach each other.

    L = L_sup(P1(x_l), y) + L_sup(P2(x_l), y) + λ_cps · [CE(P1(x_m), ŷ2) + CE(P2(x_m), ŷ1)],
    ŷk = argmax[(1 − M)·Pk(u0) + M·Pk(u1)] computed without gradient, x_m = (1 − M)·u0 + M·u1.
    P1 = ``branch1`` is evaluated and exported as the teacher file (``export_teacher``).
    """

    name = "cps"
    keys = {"lambda_cps": 1.0}
    exports = "export_teacher"

    def __init__(self, cfg, device="cpu"):
        super().__init__(cfg, device)
        self.branch1 = trained_network(cfg)
        self.branch2 = trained_network(cfg)

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
