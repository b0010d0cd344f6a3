"""Training batches: labeled + two unlabeled streams + CutMix masks, sharded over processes.

Everything a batch holds is a deterministic function of ``(cfg.seed, epoch, global sample position)``:

* Epoch = ``max(n_labeled, n_unlabeled) // global_batch`` iterations. Each stream (labeled, unlabeled
  0, unlabeled 1) gets its own order per epoch of length ``max(n_labeled, n_unlabeled)``: every index
  of its set repeated ``length // n`` times plus a random tail of ``length % n`` distinct indices,
  shuffled. The larger set is thus a plain permutation, the smaller one oversampled; the two
  unlabeled streams are independent shuffles re-drawn every epoch.
* The augmentation of the sample at global position ``p`` of stream ``s`` and its CutMix mask use a
  Generator seeded by ``SeedSequence([seed, tag, s, epoch, p])``.
* Iteration ``i`` covers global positions ``i*G .. (i+1)*G - 1`` (G = global_batch); process ``r`` of
  ``W`` takes the contiguous share ``i*G + r*G/W .. i*G + (r+1)*G/W - 1``, split into micro-batches of
  ``cfg.micro_batch``.

So the data never depends on ``num_workers`` or on where a run resumes (``start_iter`` skips
iterations without reading them).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import batch_split
from ..utils import UserError, raise_item_error, user_error_as_item
from .batch import BOX_OF, IMAGE_L, IMAGE_U0, IMAGE_U1, LABEL_L, MASK_MIX, as_batch, batch_specs, label_dtype
from .cutmix import box_mask_from_cfg
from .dataset import SegDataset
from .layouts import dataset_dir, layout_of
from .lists import read_list, require_split_lists, split_paths
from .slots import SlotRing, allocate
from .transforms import augment

_FORK = "fork" if sys.platform.startswith("linux") else None
STREAM_LABELED, STREAM_U0, STREAM_U1, STREAM_MASK = 0, 1, 2, 3
_TAG_ORDER, _TAG_SAMPLE = 0x0D3E, 0x5A17  # keep order and per-sample seeds apart
_SLOT_KEY = "__slot__"
_PREFETCH = 2  # micro-batches each worker prepares ahead


def _entropy(seed) -> int:
    return int(seed) % (1 << 64)


def stream_order(n_items: int, length: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    """Indices (length,) int64 into a set of ``n_items`` for one stream and epoch.

    Each index appears ``length // n_items`` times, plus ``length % n_items`` distinct random ones,
    all shuffled. Deterministic in (seed, epoch, stream).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_entropy(seed), _TAG_ORDER, stream, epoch])))
    repeats, tail = divmod(length, n_items)
    parts = [np.tile(np.arange(n_items, dtype=np.int64), repeats), rng.choice(n_items, tail, replace=False)]
    return rng.permutation(np.concatenate(parts).astype(np.int64))


def sample_rng(seed: int, epoch: int, position: int, stream: int) -> np.random.Generator:
    """The Generator for the sample at global ``position`` of ``stream`` in ``epoch``."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([_entropy(seed), _TAG_SAMPLE, stream, epoch, position]))
    )


class _EpochBatches(Dataset):
    """Micro-batch ``k`` of one process's epoch (map-style, so workers can take any ``k``)."""

    def __init__(self, loader: "TrainLoader", epoch: int, orders: dict, ring: SlotRing | None = None):
        self.cfg = loader.cfg
        self.ring = ring  # with workers: micro-batches travel through shared slots
        self.epoch = epoch
        self.orders = orders
        self.labeled, self.unlabeled = loader.labeled, loader.unlabeled
        self.need_unlabeled = loader.need_unlabeled
        self.positions = loader.positions
        self.length = loader.iters_per_epoch * loader.accum
        self.micro_batch = loader.micro_batch
        self.crop = int(self.cfg.crop_size)
        self.scales = list(self.cfg.train_scales)
        self.ignore = loader.layout.ignore_index
        self.label_dtype = label_dtype(loader.layout.num_classes, self.ignore)

    def __len__(self) -> int:
        return self.length

    def _augment(self, dataset, stream: int, position: int, out: np.ndarray, out_label: np.ndarray | None):
        sample = dataset[int(self.orders[stream][position])]
        rng = sample_rng(self.cfg.seed, self.epoch, position, stream)
        _, _, valid = augment(
            sample["image"],
            sample.get("label") if out_label is not None else None,
            rng,
            crop_size=self.crop,
            scales=self.scales,
            ignore_index=self.ignore,
            out=out,
            out_label=out_label,
        )
        return valid

    def __getitem__(self, k: int) -> dict:
        return user_error_as_item(self._build, k)  # _EpochIterator re-raises it unchanged

    def specs(self) -> dict:
        """``{key: (shape, dtype)}`` of one micro-batch's buffers (images HWC)."""
        return batch_specs(self.micro_batch, self.crop, self.label_dtype, unlabeled=self.need_unlabeled)

    def _build(self, k: int) -> dict:
        positions = self.positions(k)
        c = self.crop
        streams = [(IMAGE_L, self.labeled, STREAM_LABELED)]
        if self.need_unlabeled:
            streams += [(IMAGE_U0, self.unlabeled, STREAM_U0), (IMAGE_U1, self.unlabeled, STREAM_U1)]
        buffers = allocate(self.specs()) if self.ring is None else self.ring.acquire(k)
        arrays = {key: value.numpy() for key, value in buffers.items()}
        for i, p in enumerate(positions):
            for image, dataset, stream in streams:
                out_label = arrays[LABEL_L][i] if image == IMAGE_L else None
                arrays[BOX_OF[image]][i] = self._augment(dataset, stream, p, arrays[image][i], out_label)
            if self.need_unlabeled:
                mask_rng = sample_rng(self.cfg.seed, self.epoch, p, STREAM_MASK)
                arrays[MASK_MIX][i, 0] = box_mask_from_cfg((c, c), mask_rng, self.cfg)
        return as_batch(buffers) if self.ring is None else {_SLOT_KEY: k}


class _EpochIterator:
    """Iterable over one epoch's micro-batches with ``len()``; re-raises worker UserErrors intact."""

    def __init__(self, data_loader: DataLoader, length: int, ring: SlotRing | None = None, pin: bool = False):
        self._data_loader = data_loader
        self._length = length
        self._ring, self._pin = ring, pin

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        for batch in self._data_loader:
            batch = raise_item_error(batch)
            if _SLOT_KEY in batch:
                batch = as_batch(self._ring.copy_out(batch[_SLOT_KEY], pin=self._pin))
            yield batch


class TrainLoader:
    """Training micro-batches of one process (see the module docstring for the sampling rules).

    ``TrainLoader(cfg, *, rank=0, world_size=1, need_unlabeled=True)`` reads the split lists of
    ``cfg`` (:func:`split_paths`) and exposes ``iters_per_epoch``, ``accum`` (micro-batches per
    iteration on this process) and ``micro_batch``. ``epoch(e, start_iter=0)`` yields
    ``(iters_per_epoch - start_iter) * accum`` dicts of CPU tensors (the keys of
    :mod:`furnace.datasets.batch`):

    * ``image_l`` (B, 3, c, c) uint8 RGB (a channels-last view), ``label_l`` (B, c, c) uint8
      (255 = ignore; int16 above 256 classes), ``valid_l`` (B, 4) int32 ``(y0, x0, y1, x1)`` boxes of
      real pixels (the rest is padding, 0 after normalisation);
    * with ``need_unlabeled``: ``image_u0``, ``image_u1`` with ``valid_u0``, ``valid_u1`` and
      ``mask_mix`` (B, 1, c, c) uint8 in {0, 1} (1 = pixel from u1),

    with B = ``micro_batch`` and c = ``cfg.crop_size``. :func:`furnace.datasets.to_device` turns it
    into what the methods consume (float32 normalised images, int64 labels, float32 mask).
    """

    def __init__(self, cfg, *, rank: int = 0, world_size: int = 1, need_unlabeled: bool = True):
        self.cfg = cfg
        self.rank, self.world_size = int(rank), int(world_size)
        self.need_unlabeled = need_unlabeled
        self.layout = layout_of(cfg)
        self.global_batch = int(cfg.global_batch)
        self.micro_batch, self.accum = batch_split(cfg, self.world_size)  # as resolve_config / the trainer

        root = dataset_dir(cfg)
        labeled_list, unlabeled_list, _ = require_split_lists(cfg, with_val=False)
        self.labeled = SegDataset(self.layout, root, labeled_list, with_label=True, split="train")
        if need_unlabeled:
            self.unlabeled = SegDataset(self.layout, root, unlabeled_list, with_label=False, split="train")
            n_unlabeled = len(self.unlabeled)
        else:
            # The epoch length still follows the unlabeled list, so a supervised baseline runs the
            # same number of iterations as the semi-supervised recipe it is compared with.
            self.unlabeled = None
            n_unlabeled = len(read_list(unlabeled_list, self.layout.list_format))
        self.n_labeled, self.n_unlabeled = len(self.labeled), n_unlabeled
        self.samples_per_epoch = max(self.n_labeled, self.n_unlabeled)
        self.iters_per_epoch = self.samples_per_epoch // self.global_batch
        if self.iters_per_epoch < 1:
            raise UserError(
                f"{labeled_list}: {self.n_labeled} labeled and {self.n_unlabeled} unlabeled samples make no full "
                f"global batch of {self.global_batch}; lower global_batch or use more data"
            )

    def __len__(self) -> int:
        """Micro-batches per full epoch on this process."""
        return self.iters_per_epoch * self.accum

    def positions(self, k: int) -> range:
        """Global sample positions of this process's micro-batch ``k`` (counted from the epoch start):
        micro-batch ``j`` of iteration ``i`` on rank ``r`` holds
        ``i*G + r*G/W + j*B .. + B - 1``."""
        iteration, j = divmod(k, self.accum)
        start = (
            iteration * self.global_batch + self.rank * (self.global_batch // self.world_size) + j * self.micro_batch
        )
        return range(start, start + self.micro_batch)

    def orders(self, epoch: int) -> dict:
        """``{stream: indices}`` for the epoch: positions ``0 .. iters_per_epoch*G - 1`` index into
        the labeled set (stream 0) and the unlabeled set (streams 1, 2)."""
        used = self.iters_per_epoch * self.global_batch
        seed = self.cfg.seed
        orders = {
            STREAM_LABELED: stream_order(self.n_labeled, self.samples_per_epoch, seed, epoch, STREAM_LABELED)[:used]
        }
        if self.need_unlabeled:
            for stream in (STREAM_U0, STREAM_U1):
                orders[stream] = stream_order(self.n_unlabeled, self.samples_per_epoch, seed, epoch, stream)[:used]
        return orders

    def epoch(self, epoch: int, start_iter: int = 0) -> _EpochIterator:
        """Micro-batches of ``epoch`` from iteration ``start_iter`` on (earlier ones are not read)."""
        if not 0 <= start_iter <= self.iters_per_epoch:
            raise ValueError(f"start_iter={start_iter} outside [0, {self.iters_per_epoch}]")
        num_workers = int(self.cfg.num_workers)
        batches = _EpochBatches(self, int(epoch), self.orders(int(epoch)))
        ring = None
        if num_workers > 0:  # one slot per micro-batch the DataLoader can have in flight, plus margin
            ring = SlotRing(batches.specs(), _PREFETCH * num_workers + 2, first=start_iter * self.accum)
            batches.ring = ring
        data_loader = DataLoader(
            batches,
            batch_size=None,
            sampler=range(start_iter * self.accum, len(batches)),
            num_workers=num_workers,
            prefetch_factor=_PREFETCH if num_workers > 0 else None,
            pin_memory=torch.cuda.is_available() and ring is None,  # with workers the slot copy pins
            # Fork on Linux, whatever Python's default: other start methods re-import the launching
            # script (train.py) in every worker. (And no cv2.setNumThreads() in the workers: in a
            # forked child it waits forever on the parent's OpenCV thread-pool state.)
            multiprocessing_context=_FORK if num_workers > 0 else None,
        )
        return _EpochIterator(data_loader, len(batches) - start_iter * self.accum, ring, pin=torch.cuda.is_available())


def build_val_dataset(cfg) -> SegDataset:
    """The validation :class:`SegDataset` of ``cfg`` with labels (raw images: the evaluator
    normalises with :func:`furnace.datasets.transforms.normalize`)."""
    layout = layout_of(cfg)
    return SegDataset(layout, dataset_dir(cfg), split_paths(cfg)[2], with_label=True, split="val")
