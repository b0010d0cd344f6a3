"""What every training method is: an ``nn.Module`` over the networks it trains, declared in one file.

A method declares, as class attributes, its ``name`` (``method=<name>`` in a config), its config
``keys`` with their defaults (and ``choices`` for some), the frozen ``teachers`` it loads (config key of
the file -> default architecture; the file defaults to the teacher the dataset's CPS run exports) and,
for a method that trains teachers, the key of the file it ``exports``. Defining the class registers it
(:data:`furnace.config.METHODS`): preparation, validation and the teacher paths follow from that.
"""
import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..config import register_method
from ..engine import dist
from ..engine.rng import preserved_cpu_rng
from ..losses import supervised_loss
from ..models import build_model, load_segmentor, read_segmentor_meta, save_segmentor, segmentor_record
from ..utils import UserError
from .teachers import FrozenTeacher


class Method(nn.Module):
    """A training method; its parameters and ``state_dict`` are exactly the networks it trains.

    ``Method(cfg, device)`` takes a prepared config; the frozen teachers (``self.teachers``, by config
    key) are loaded onto ``device`` and are not submodules, so they stay out of ``parameters()``,
    ``state_dict()``, DistributedDataParallel and SyncBatchNorm. ``forward(batch)`` (the keys of
    :mod:`furnace.datasets.batch`, on the device) returns a dict of 0-dim losses whose ``"loss"`` is the
    total to backpropagate; the others are logged.
    """

    name: ClassVar[str] = ""
    keys: ClassVar[dict] = {}
    choices: ClassVar[dict] = {}
    teachers: ClassVar[dict] = {}
    exports: ClassVar[str] = ""
    uses_unlabeled: ClassVar[bool] = True  # False: the loader makes labeled batches only

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            register_method(cls)

    @classmethod
    def validate(cls, cfg) -> None:
        """Raise UserError for a value of this method's keys that cannot work (choices are checked already)."""

    def __init__(self, cfg, device="cpu"):
        super().__init__()
        self.cfg = cfg
        with preserved_cpu_rng():  # building a teacher to load it draws random init: keep it off the student's stream
            self.teachers = {key: load_teacher(cfg, key, device) for key in type(self).teachers}

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The config's supervised loss (``sup_loss``: CE, or OHEM with ``ohem_thresh`` / ``ohem_min_kept``)."""
        cfg = self.cfg
        return supervised_loss(logits, target, cfg.sup_loss, cfg.ohem_thresh, cfg.ohem_min_kept)

    def eval_network(self) -> nn.Module:
        """The network that is evaluated, snapshotted and exported."""
        raise NotImplementedError

    def on_train_end(self, layout=None) -> None:
        """After the last iteration, on the main process: write the ``exports`` file, if the method has one."""
        if self.exports:
            path, kept = Path(self.cfg[self.exports]), ""
            if path.is_file():  # e.g. a real teacher, and this a smoke test of its experiment: kept one generation
                previous = path.with_name(f"{path.stem}.previous{path.suffix}")
                os.replace(path, previous)
                kept = f" (the file there before is now {previous.name})"
            save_segmentor(self.eval_network(), path, extra={"method": self.name, "labeled_ratio": self.cfg.labeled_ratio,
                                                             **segmentor_record(self.cfg, layout)})
            print(f"exported {self.cfg.arch} -> {path}{kept}")


def check_files(cfg, teachers=()) -> None:
    """UserError naming the first file ``cfg`` needs that is missing or wrong: the ImageNet file
    (``pretrained``), then the teacher file of each of the ``teachers`` keys (see :func:`check_teacher`)."""
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise UserError(f"config: pretrained={cfg.pretrained!r}: ImageNet weight file not found. Put the torchvision "
                        f"or timm state dict of {cfg.arch} there (see DATA/README.md), or set pretrained='' to train "
                        f"from scratch")
    for key in teachers:
        check_teacher(cfg, key)


def check_teacher(cfg, key: str) -> None:
    """UserError unless ``cfg[key]`` is a segmentor file of ``cfg[key + '_arch']`` with ``cfg.num_classes`` classes."""
    path, arch = cfg[key], cfg[f"{key}_arch"]
    if not Path(path).is_file():
        raise UserError(
            f"config: {key}={path!r}: teacher file not found. Train it with the CPS experiment of the same "
            f"dataset and labeled_ratio (it exports there), or convert a released checkpoint with "
            f"`python -m furnace.tools.convert_official SRC {path} --arch {arch} --branch branch1`")
    meta = read_segmentor_meta(path)
    if meta["arch"] != arch or meta["num_classes"] != cfg.num_classes:
        raise UserError(f"{path}: teacher file holds a {meta['arch']} with {meta['num_classes']} classes, but config "
                        f"{key}_arch={arch!r} and num_classes={cfg.num_classes} are expected; point {key} to the right file")


def trained_network(cfg) -> nn.Module:
    """The DeepLabv3+ of ``cfg.arch`` a method trains, with the config's model options and ImageNet file
    (UserError before any work when that file is missing)."""
    check_files(cfg)
    return build_model(cfg.arch, cfg.num_classes, output_stride=cfg.output_stride, pretrained=cfg.pretrained,
                       width_mult=cfg.width_mult, head_channels=cfg.head_channels, verbose=dist.is_main())


def load_teacher(cfg, key: str, device="cpu") -> FrozenTeacher:
    """The frozen teacher file ``cfg[key]`` (architecture ``cfg[key + '_arch']``, ``cfg.num_classes``
    classes) on ``device``, set up as ``teacher_impl``, ``teacher_bn`` and ``compile_teachers`` say."""
    check_teacher(cfg, key)
    return FrozenTeacher(load_segmentor(cfg[key], map_location=device), fast=cfg.teacher_impl == "batched",
                         bn_train=cfg.teacher_bn == "train", compile=cfg.compile_teachers)
