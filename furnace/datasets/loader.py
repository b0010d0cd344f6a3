"""Training batches: labeled + two unlabeled streams + CutMix masks, sharded over processes.

A batch is a function of ``(cfg.seed, epoch, global sample position)`` only, never of ``num_workers`` or of where a
run resumes. An epoch is L // global_batch iterations, L = max(n_labeled, n_unlabeled); each stream (labeled,
unlabeled 0, unlabeled 1) draws its own order of length L per epoch (:func:`stream_order`). Iteration ``i`` covers
global positions ``i*G ..``, rank ``r`` of ``W`` the share from ``i*G + r*G/W``; each sample's augmentation and
CutMix mask draw from :func:`sample_rng` of its position."""

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import batch_split
from ..utils import UserError, raise_item_error, user_error_as_item
from .batch import BOX_OF, IMAGE_L, IMAGE_U0, IMAGE_U1, LABEL_L, MASK_MIX, allocate, as_batch, batch_specs, label_dtype
from .cutmix import box_mask
from .dataset import SegDataset
from .layouts import dataset_dir, layout_of
from .lists import read_list, require_split_lists, split_paths
from .transforms import augment

_FORK = "fork" if sys.platform.startswith("linux") else None
STREAM_LABELED, STREAM_U0, STREAM_U1, STREAM_MASK = 0, 1, 2, 3
_TAG_ORDER, _TAG_SAMPLE = 0x0D3E, 0x5A17  # keep order and per-sample seeds apart


def _rng(seed, *words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) % (1 << 64), *words])))


def stream_order(n_items: int, length: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    """(length,) int64: each of ``n_items`` indices ``length // n_items`` times, a random distinct tail, shuffled."""
    rng = _rng(seed, _TAG_ORDER, stream, epoch)
    repeats, tail = divmod(length, n_items)
    parts = [np.tile(np.arange(n_items, dtype=np.int64), repeats), rng.choice(n_items, tail, replace=False)]
    return rng.permutation(np.concatenate(parts).astype(np.int64))


def sample_rng(seed: int, epoch: int, position: int, stream: int) -> np.random.Generator:
    """The Generator for the sample at global ``position`` of ``stream`` in ``epoch``."""
    return _rng(seed, _TAG_SAMPLE, stream, epoch, position)


class _Epoch(Dataset):
    """Micro-batch ``k`` of one process's epoch; a UserError comes back as an item, to keep its message intact."""

    def __init__(self, loader: "TrainLoader", epoch: int):
        self.loader, self.epoch, self.orders = loader, epoch, loader.orders(epoch)

    def __len__(self) -> int:
        return self.loader.iters_per_epoch * self.loader.accum

    def __getitem__(self, k: int) -> dict:
        return user_error_as_item(self._build, k)

    def _build(self, k: int) -> dict:
        loader, cfg = self.loader, self.loader.cfg
        streams = [(IMAGE_L, loader.labeled, STREAM_LABELED)]
        if loader.need_unlabeled:
            streams += [(IMAGE_U0, loader.unlabeled, STREAM_U0), (IMAGE_U1, loader.unlabeled, STREAM_U1)]
        buffers = allocate(loader.specs)
        arrays = {key: value.numpy() for key, value in buffers.items()}
        for i, p in enumerate(loader.positions(k)):
            for image, dataset, stream in streams:
                sample = dataset[int(self.orders[stream][p])]
                out_label = arrays[LABEL_L][i] if image == IMAGE_L else None
                _, _, arrays[BOX_OF[image]][i] = augment(
                    sample["image"], sample.get("label") if out_label is not None else None,
                    sample_rng(cfg.seed, self.epoch, p, stream), crop_size=cfg.crop_size, scales=cfg.train_scales,
                    out=arrays[image][i], out_label=out_label)
            if loader.need_unlabeled:
                arrays[MASK_MIX][i, 0] = box_mask((cfg.crop_size, cfg.crop_size), sample_rng(
                    cfg.seed, self.epoch, p, STREAM_MASK), int(cfg.cutmix_boxes), tuple(cfg.cutmix_area))
        return as_batch(buffers)


def iterations_per_epoch(n_labeled: int, n_unlabeled: int, global_batch: int, labeled_list) -> int:
    """An epoch's iterations: the longer list over the global batch; UserError when that is not one."""
    if max(n_labeled, n_unlabeled) < global_batch:
        raise UserError(f"{labeled_list}: {n_labeled} labeled and {n_unlabeled} unlabeled samples make no full "
                        f"global batch of {global_batch}; lower global_batch or use more data")
    return max(n_labeled, n_unlabeled) // global_batch


def check_epoch(cfg) -> int:
    """:func:`iterations_per_epoch` of ``cfg``'s split lists (read, not opened as datasets): before any work."""
    layout = layout_of(cfg)
    lists = require_split_lists(cfg, with_val=False)[:2]
    n_labeled, n_unlabeled = (len(read_list(path, layout.list_format)) for path in lists)
    return iterations_per_epoch(n_labeled, n_unlabeled, int(cfg.global_batch), lists[0])


class TrainLoader:
    """Micro-batches (:mod:`furnace.datasets.batch`; unlabeled keys only ``need_unlabeled``) of one process:
    ``epoch(e, start_iter)`` yields ``(iters_per_epoch - start_iter) * accum`` of them."""

    def __init__(self, cfg, *, rank: int = 0, world_size: int = 1, need_unlabeled: bool = True):
        self.cfg, self.need_unlabeled, self.layout = cfg, need_unlabeled, layout_of(cfg)
        self.rank, self.world_size, self.global_batch = int(rank), int(world_size), int(cfg.global_batch)
        self.micro_batch, self.accum = batch_split(cfg, self.world_size)  # as the config's preparation
        self.specs = batch_specs(self.micro_batch, cfg.crop_size, label_dtype(self.layout.num_classes),
                                 unlabeled=need_unlabeled)
        root = dataset_dir(cfg)
        labeled_list, unlabeled_list, _ = require_split_lists(cfg, with_val=False)
        self.labeled = SegDataset(self.layout, root, labeled_list, with_label=True, split="train")
        self.unlabeled = (SegDataset(self.layout, root, unlabeled_list, with_label=False, split="train")
                          if need_unlabeled else None)
        # the epoch follows the unlabeled list even without it: a supervised baseline runs as many iterations
        unlabeled = self.unlabeled.entries if need_unlabeled else read_list(unlabeled_list, self.layout.list_format)
        self.n_labeled, self.n_unlabeled = len(self.labeled), len(unlabeled)
        self.samples_per_epoch = max(self.n_labeled, self.n_unlabeled)
        self.iters_per_epoch = iterations_per_epoch(self.n_labeled, self.n_unlabeled, self.global_batch, labeled_list)

    def __len__(self) -> int:
        """Micro-batches per full epoch on this process."""
        return self.iters_per_epoch * self.accum

    def positions(self, k: int) -> range:
        """Global sample positions of micro-batch ``k`` (``j`` of iteration ``i``): ``i*G + r*G/W + j*B`` on."""
        iteration, j = divmod(k, self.accum)
        start = iteration * self.global_batch + self.rank * (self.global_batch // self.world_size)
        start += j * self.micro_batch
        return range(start, start + self.micro_batch)

    def orders(self, epoch: int) -> dict:
        """``{stream: indices}`` of the epoch's positions into the labeled (0) and unlabeled (1, 2) sets."""
        used = self.iters_per_epoch * self.global_batch
        streams = {STREAM_LABELED: self.n_labeled}
        if self.need_unlabeled:
            streams.update({STREAM_U0: self.n_unlabeled, STREAM_U1: self.n_unlabeled})
        return {s: stream_order(n, self.samples_per_epoch, self.cfg.seed, epoch, s)[:used] for s, n in streams.items()}

    def epoch(self, epoch: int, start_iter: int = 0):
        """Generator of the micro-batches of ``epoch`` from iteration ``start_iter`` on (earlier ones are not read)."""
        if not 0 <= start_iter <= self.iters_per_epoch:
            raise ValueError(f"start_iter={start_iter} outside [0, {self.iters_per_epoch}]")
        workers = int(self.cfg.num_workers)
        batches = _Epoch(self, int(epoch))
        data_loader = DataLoader(
            batches, batch_size=None, sampler=range(start_iter * self.accum, len(batches)), num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            # fork on Linux whatever Python's default: other start methods re-import train.py in every worker
            multiprocessing_context=_FORK if workers > 0 else None)
        for batch in data_loader:
            yield raise_item_error(batch)


def build_val_dataset(cfg) -> SegDataset:
    """The labeled validation :class:`SegDataset` of ``cfg``, raw images (the evaluator normalises)."""
    return SegDataset(layout_of(cfg), dataset_dir(cfg), split_paths(cfg)[2], with_label=True, split="val")
