"""One dataset class for every layout: a split list resolved into (image, label) files, read with cv2.

Images are returned as H×W×3 uint8 RGB; labels as H×W uint8 index maps (255 = ignore). Every problem a
user's files can have (missing, unreadable, truncated, palette or RGB label, size mismatch, label value
outside the classes) raises :class:`~furnace.utils.UserError` naming the file when the sample is read.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from ..runtime.images import decode, read_bytes
from ..runtime.images import read_image  # noqa: F401 - re-exported: the predictors decode images as training does
from ..utils import IGNORE_INDEX, UserError
from .layouts import DatasetLayout
from .lists import read_list

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


@functools.lru_cache(maxsize=16)
def _invalid_values(num_classes: int, ignore_index: int) -> np.ndarray:
    """(256,) uint8 table: 1 for pixel values that are neither a class id nor ``ignore_index``."""
    table = np.ones(256, np.uint8)
    table[:num_classes] = 0
    if 0 <= ignore_index < 256:
        table[ignore_index] = 0
    return table


def read_label(path: str | os.PathLike, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Decode a single-channel 8-bit index PNG to (H, W) uint8 and check its values.

    Values must lie in ``[0, num_classes) ∪ {ignore_index}``; ``ignore_index`` is returned as
    ``IGNORE_INDEX`` (255). A palette PNG (whose colours cv2 would expand), an RGB/RGBA colour label,
    a 16-bit or non-PNG file raise UserError naming ``path``.
    """
    path = Path(path)
    data = read_bytes(path, "label")
    raw = data[:32].tobytes()
    if raw[:8] != _PNG_SIGNATURE or raw[12:16] != b"IHDR":
        raise UserError(f"{path}: label is not a PNG file; labels must be single-channel 8-bit index PNGs")
    bit_depth, color_type = raw[24], raw[25]
    if color_type == 3:
        raise UserError(
            f"{path}: label is a palette (colour-mapped) PNG such as VOC's SegmentationClass; its class "
            f"indices must be stored as a single-channel index PNG. Convert the dataset with "
            f"`python -m furnace.datasets.prepare_voc` (or save the palette indices as a grayscale PNG)"
        )
    if color_type != 0:
        kind = _PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
        raise UserError(
            f"{path}: label is a {kind} PNG (a colour visualisation?); labels must be single-channel "
            f"index PNGs holding class ids 0..{num_classes - 1} and {ignore_index} for ignore"
        )
    if bit_depth != 8:
        raise UserError(f"{path}: label PNG has {bit_depth}-bit pixels; labels must be 8-bit index PNGs")
    label = decode(data, cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise UserError(f"{path}: label cannot be decoded (truncated or corrupt PNG); re-create it")
    if cv2.countNonZero(cv2.LUT(label, _invalid_values(num_classes, ignore_index))):  # fast check, then detail
        counts = np.bincount(label.ravel(), minlength=256)
        counts[:num_classes] = 0
        counts[ignore_index] = 0
        bad = np.flatnonzero(counts)
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise UserError(
            f"{path}: label values {{{shown}}} are outside the {num_classes} classes (0..{num_classes - 1}) "
            f"and ignore {ignore_index}; is this the right dataset, and are labels trainIds/index values?"
        )
    if ignore_index != IGNORE_INDEX:  # everything downstream (losses, metrics) knows void as IGNORE_INDEX
        label = np.where(label == ignore_index, np.uint8(IGNORE_INDEX), label)
    return label


def read_pair(image_path, label_path, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """``(image, label)`` of one sample with all checks of :func:`read_image` / :func:`read_label`
    plus equal sizes (UserError naming both files otherwise)."""
    image = read_image(image_path)
    label = read_label(label_path, num_classes, ignore_index)
    if image.shape[:2] != label.shape:
        raise UserError(
            f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
            f"{label.shape[1]}x{label.shape[0]} (width x height); they must have the same size"
        )
    return image, label


def infer_split(list_path: str | os.PathLike) -> str:
    """``"val"`` for a list whose file name starts with ``val``, else ``"train"`` (id lists resolve
    into ``train_aug/`` or ``val/`` accordingly)."""
    return "val" if Path(list_path).name.lower().startswith("val") else "train"


class SegDataset(Dataset):
    """Samples of one split list.

    ``SegDataset(layout, root, list_path, with_label=True, *, split=None)``: ``root`` is the dataset
    directory (``data_root / layout.dir_name``); ``split`` (train | val) picks where ids resolve for
    id lists, inferred from the list's file name when None (see :func:`infer_split`).

    ``ds[i] -> {"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8 (only with_label), "name": str}``.
    The list is read (strictly) on construction; files are read on access.
    """

    def __init__(self, layout: DatasetLayout, root, list_path, with_label: bool = True, *, split: str | None = None):
        self.layout = layout
        self.root = Path(root)
        self.list_path = Path(list_path)
        self.with_label = with_label
        self.split = split or infer_split(list_path)
        if self.split not in ("train", "val"):
            raise ValueError(f"split must be train or val, not {self.split!r}")
        self.entries = read_list(self.list_path, layout.list_format)

    def __len__(self) -> int:
        return len(self.entries)

    def files(self, index: int) -> tuple[Path, Path, str]:
        """``(image_path, label_path, name)`` of sample ``index``."""
        return self.layout.resolve(self.entries[index], self.root, self.split)

    def __getitem__(self, index: int) -> dict:
        image_path, label_path, name = self.files(index)
        if not self.with_label:
            return {"image": read_image(image_path), "name": name}
        image, label = read_pair(image_path, label_path, self.layout.num_classes, self.layout.ignore_index)
        return {"image": image, "label": label, "name": name}

    def __repr__(self) -> str:
        return f"SegDataset({self.layout.name}, {self.list_path}, {len(self)} samples, split={self.split})"
