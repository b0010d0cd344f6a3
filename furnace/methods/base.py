"""What every training method shares: network construction and the frozen-teacher mechanics."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engine import dist
from ..losses import supervised_loss
from ..utils import UserError


class Method(nn.Module):
    """A training method: its parameters are exactly the networks it trains.

    ``forward(batch)`` returns a dict of 0-dim losses; ``"loss"`` is the total to backpropagate, the
    other entries are logged. Frozen networks (teachers) are registered with :meth:`add_frozen`: they
    follow ``.to()``/``.cuda()``/channels_last but stay out of ``parameters()``, ``state_dict()``,
    DistributedDataParallel and SyncBatchNorm conversion.
    """

    needs_unlabeled: bool = True

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self._frozen: dict[str, nn.Module] = {}

    # -- frozen networks ----------------------------------------------------------------------
    def add_frozen(self, name: str, network: nn.Module) -> nn.Module:
        network.requires_grad_(False)
        self._frozen[name] = network
        return network

    def frozen(self, name: str) -> nn.Module:
        return self._frozen[name]

    def train(self, mode: bool = True):
        """The trained networks follow ``mode``; each frozen network is told too and decides what it
        means for it (a :class:`~furnace.methods.teachers.FrozenTeacher` stays in eval mode unless its
        BN is meant to use batch statistics)."""
        super().train(mode)
        for network in self._frozen.values():
            network.train(mode)
        return self

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for network in self._frozen.values():
            network._apply(fn)
        return self

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The config's supervised loss (``sup_loss``, ``ohem_thresh``, ``ohem_min_kept``) of ``logits``."""
        cfg = self.cfg
        return supervised_loss(logits, target, cfg.sup_loss, cfg.ohem_thresh, cfg.ohem_min_kept)

    # -- hooks for the engine -----------------------------------------------------------------
    def eval_network(self) -> nn.Module:
        """The network that is evaluated and snapshotted."""
        raise NotImplementedError

    def on_train_end(self, cfg) -> None:
        """Called once on the main process after the last iteration."""


def build_network(cfg) -> nn.Module:
    """The trained DeepLabv3+ of ``cfg.arch`` with the config's model options and ImageNet file."""
    from ..models import build_model

    return build_model(
        cfg.arch,
        cfg.num_classes,
        output_stride=cfg.output_stride,
        pretrained=cfg.pretrained,
        width_mult=cfg.width_mult,
        head_channels=cfg.head_channels,
        verbose=dist.is_main(),
    )


def check_pretrained(cfg) -> None:
    """Fail before any work when the configured ImageNet weight file is missing."""
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise UserError(
            f"config: pretrained={cfg.pretrained!r}: ImageNet weight file not found. Put the torchvision or "
            f"timm state dict of {cfg.arch} there (see DATA/README.md), or set pretrained='' to train from scratch"
        )


def load_teacher(cfg, key: str) -> nn.Module:
    """Load the frozen teacher file ``cfg[key]`` strictly and check it against the config.

    The file must be one of our segmentor files (a CPS export, or an original release converted with
    ``python -m furnace.tools.convert_official``) of architecture ``cfg[key + '_arch']`` with
    ``cfg.num_classes`` classes; anything else stops with the path named.
    """
    from ..models import load_segmentor, read_segmentor_meta

    path = cfg[key]
    want_arch = cfg[key + "_arch"]
    if not path or not Path(path).is_file():
        raise UserError(
            f"config: {key}={path!r}: teacher file not found. Train it with the CPS experiment of the same "
            f"dataset and labeled_ratio (it exports there), or convert a released checkpoint with "
            f"`python -m furnace.tools.convert_official SRC {path or 'DST'} --arch {want_arch} --branch branch1`"
        )
    meta = read_segmentor_meta(path)
    if meta["arch"] != want_arch or meta["num_classes"] != cfg.num_classes:
        raise UserError(
            f"{path}: teacher file holds a {meta['arch']} with {meta['num_classes']} classes, but config "
            f"{key}_arch={want_arch!r} and num_classes={cfg.num_classes} are expected; point {key} to the right file"
        )
    return load_segmentor(path, map_location="cpu")
