"""The "Sup." baseline: one network trained on the labeled images only."""
from __future__ import annotations

from ..datasets.batch import IMAGE_L, LABEL_L
from .base import Method, build_network, check_pretrained


class Supervised(Method):
    """L = L_sup(P(x_l), y). Sees only the labeled stream (same number of iterations as the others)."""

    needs_unlabeled = False

    def __init__(self, cfg):
        super().__init__(cfg)
        check_pretrained(cfg)
        self.model = build_network(cfg)

    def forward(self, batch):
        sup = self.supervised_loss(self.model(batch[IMAGE_L]), batch[LABEL_L])
        return {"loss": sup, "sup": sup}

    def eval_network(self):
        return self.model
