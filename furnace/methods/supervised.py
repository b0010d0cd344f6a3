"""The "Sup." baseline: one network trained on the labeled images only."""
from ..datasets.batch import IMAGE_L, LABEL_L
from .base import Method, trained_network


class Supervised(Method):
    """L = L_sup(P(x_l), y). Sees only the labeled stream (the same number of iterations as the others)."""

    name = "supervised"
    uses_unlabeled = False

    def __init__(self, cfg, device="cpu"):
        super().__init__(cfg, device)
        self.model = trained_network(cfg)

    def forward(self, batch):
        sup = self.supervised_loss(self.model(batch[IMAGE_L]), batch[LABEL_L])
        return {"loss": sup, "sup": sup}

    def eval_network(self):
        return self.model
