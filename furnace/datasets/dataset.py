"""One dataset class for every layout: a split list resolved into (image, label) files, read with cv2; every
problem a user's files can have raises :class:`~furnace.utils.UserError` naming the file when it is read."""

import functools
import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..runtime.images import decode, read_bytes
from ..runtime.images import read_image  # noqa: F401 - re-exported: the predictors decode images as training does
from ..utils import IGNORE_INDEX, UserError
from .layouts import DatasetLayout
from .lists import read_list

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {2: "RGB", 4: "grayscale+alpha", 6: "RGBA"}


@functools.lru_cache(maxsize=16)
def _invalid_values(num_classes: int, ignore_index: int) -> np.ndarray:
    """(256,) uint8 table: 1 for pixel values that are neither a class id nor ``ignore_index``."""
    table = np.ones(256, np.uint8)
    table[:num_classes] = 0
    if 0 <= ignore_index < 256:
        table[ignore_index] = 0
    return table


def _palette_indices(data: np.ndarray) -> np.ndarray | None:
    """(H, W) uint8 palette indices of a palette PNG (cv2 would expand them into colours); None if undecodable."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as img:
            return np.array(img) if img.mode == "P" else None
    except (OSError, ValueError, SyntaxError):  # PIL's errors for broken files
        return None


def read_label(path: str | os.PathLike, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """An 8-bit index PNG, single-channel or palette (its indices are the values), as (H, W) uint8 with
    ``ignore_index`` returned as 255; UserError naming ``path`` for any other file or a value outside the classes."""
    path = Path(path)
    data = read_bytes(path, "label")
    raw = data[:32].tobytes()
    if raw[:8] != _PNG_SIGNATURE or raw[12:16] != b"IHDR":
        raise UserError(f"{path}: label is not a PNG file; labels must be single-channel 8-bit index PNGs")
    bit_depth, color_type = raw[24], raw[25]
    if color_type not in (0, 3):
        kind = _PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
        raise UserError(f"{path}: label is a {kind} PNG (a colour visualisation?); labels must be single-channel "
                        f"index PNGs holding class ids 0..{num_classes - 1} and {ignore_index} for ignore")
    if color_type == 0 and bit_depth != 8:
        raise UserError(f"{path}: label PNG has {bit_depth}-bit pixels; labels must be 8-bit index PNGs")
    label = _palette_indices(data) if color_type == 3 else decode(data, cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise UserError(f"{path}: label cannot be decoded (truncated or corrupt PNG); re-create it")
    if cv2.countNonZero(cv2.LUT(label, _invalid_values(num_classes, ignore_index))):  # fast check, then detail
        counts = np.bincount(label.ravel(), minlength=256)
        counts[:num_classes] = 0
        counts[ignore_index] = 0
        bad = np.flatnonzero(counts)
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise UserError(f"{path}: label values {{{shown}}} are outside the {num_classes} classes "
                        f"(0..{num_classes - 1}) and ignore {ignore_index}; fix those pixels, or set num_classes / "
                        f"ignore_index to what the labels hold (is this the right dataset? Cityscapes labels must "
                        f"be trainIds)")
    if ignore_index != IGNORE_INDEX:  # everything downstream (losses, metrics) knows void as IGNORE_INDEX
        label = np.where(label == ignore_index, np.uint8(IGNORE_INDEX), label)
    return label


class SegDataset(Dataset):
    """Samples of a split list in the dataset folder ``root``: ``ds[i] -> {"image": (H, W, 3) uint8 RGB, "label":
    (H, W) uint8 (with_label), "name": str}``; ``split`` defaults to ``val`` for a list named ``val*``."""

    def __init__(self, layout: DatasetLayout, root, list_path, with_label: bool = True, *, split: str | None = None):
        self.layout, self.root, self.list_path, self.with_label = layout, Path(root), Path(list_path), with_label
        self.split = split or ("val" if self.list_path.name.lower().startswith("val") else "train")
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
        image = read_image(image_path)
        if not self.with_label:
            return {"image": image, "name": name}
        label = read_label(label_path, self.layout.num_classes, self.layout.ignore_index)
        if image.shape[:2] != label.shape:
            raise UserError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                            f"{label.shape[1]}x{label.shape[0]} (width x height); they must have the same size")
        return {"image": image, "label": label, "name": name}

    def __repr__(self) -> str:
        return f"SegDataset({self.layout.name}, {self.list_path}, {len(self)} samples, split={self.split})"
