"""Per-dataset layout descriptions: where files live, which list format they use, classes, palettes.

A :class:`DatasetLayout` says where a dataset's images, labels and split lists live under
``data_root / dir_name``, how a list entry resolves into files, and the dataset's class names and
palette (:func:`classes_and_palette` fills in what a layout lacks). The list files themselves are read
and checked by :mod:`furnace.datasets.lists`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.drawing import colorize  # noqa: F401 - re-exported: predictions and datasets share it
from ..runtime.images import IMAGE_EXTS
from ..utils import IGNORE_INDEX, UserError


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC bit-interleaved colormap: (n, 3) uint8 RGB; row i is the colour of index i.

    Bits 0, 1, 2 of the index go to the most significant free bit of R, G, B, then the next three
    bits to the next lower bit, and so on.
    """
    cmap = np.zeros((n, 3), np.uint8)
    for index in range(n):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        cmap[index] = (r, g, b)
    return cmap


VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# The 19 Cityscapes evaluation classes in trainId order: (official labelId, name, official colour).
_CITY_TABLE = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
CITY_CLASSES = tuple(name for _, name, _ in _CITY_TABLE)
CITY_COLORS = tuple(color for _, _, color in _CITY_TABLE)
# Official labelId -> trainId; every other id (unlabeled, ego vehicle, ..., license plate) is void (255).
CITY_LABELID_TO_TRAINID = {label_id: train_id for train_id, (label_id, _, _) in enumerate(_CITY_TABLE)}

# Background, then {striped, dotted, grid} x {dark pattern on a light base, light pattern on a dark base}.
_SYNTHETIC_TABLE = (
    ("background", (0, 0, 0)),
    ("stripes_dark", (230, 25, 75)),
    ("stripes_light", (245, 130, 48)),
    ("dots_dark", (60, 180, 75)),
    ("dots_light", (0, 130, 200)),
    ("grid_dark", (145, 30, 180)),
    ("grid_light", (240, 50, 230)),
)
SYNTHETIC_CLASSES = tuple(name for name, _ in _SYNTHETIC_TABLE)
SYNTHETIC_COLORS = tuple(color for _, color in _SYNTHETIC_TABLE)


@dataclass(frozen=True, eq=False)
class DatasetLayout:
    """How one dataset is stored under ``data_root / dir_name``.

    ``list_format`` is ``"ids"`` or ``"pairs"`` (see :mod:`furnace.datasets.lists`); ``split_dirs`` maps
    ``"train"``/``"val"`` to the folder ids resolve into (``ids`` format only). List locations are
    relative to the dataset directory; ``subset_pattern`` takes ``kind`` (labeled | unlabeled) and
    ``ratio``.
    """

    name: str
    dir_name: str
    class_names: tuple
    palette: np.ndarray = field(repr=False)
    list_format: str
    train_list: str
    val_list: str
    subset_pattern: str
    split_dirs: dict = field(default_factory=dict)
    image_ext: str = ".jpg"
    label_ext: str = ".png"
    ignore_index: int = IGNORE_INDEX
    ignore_color: tuple = (255, 255, 255)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def subset_dir(self) -> str:
        return os.path.dirname(self.subset_pattern)

    def subset_list(self, kind: str, ratio: int) -> str:
        """Relative path of the ``kind`` (labeled | unlabeled) list of the 1/``ratio`` partition."""
        if kind not in ("labeled", "unlabeled"):
            raise ValueError(f"kind must be labeled or unlabeled, not {kind!r}")
        return self.subset_pattern.format(kind=kind, ratio=int(ratio))

    def resolve(self, entry: str, root: str | os.PathLike, split: str = "train") -> tuple[Path, Path, str]:
        """Files of one list entry: ``(image_path, label_path, name)``.

        ``entry`` is a line as returned by :func:`~furnace.datasets.lists.read_list` (an id, or ``"img<TAB>label"``);
        ``split`` (train | val) picks the folder for id lists and is ignored for pair lists.
        """
        root = Path(root)
        if self.list_format == "ids":
            folder = root / self.split_dirs[split]
            return folder / "image" / f"{entry}{self.image_ext}", folder / "label" / f"{entry}{self.label_ext}", entry
        image, label = entry.split("\t")
        name = Path(image).stem
        return root / image.lstrip("/"), root / label.lstrip("/"), name

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Colour image (H, W, 3) uint8 RGB of an index map (H, W); ignore and unknown values get
        ``ignore_color``."""
        return colorize(label, self.palette[: self.num_classes], self.ignore_color)


def generic_class_names(num_classes: int) -> list[str]:
    """``class_0``, ``class_1``, ...: the names of classes no layout names."""
    return [f"class_{i}" for i in range(num_classes)]


def classes_and_palette(layout: DatasetLayout | None, num_classes: int) -> tuple[list[str], np.ndarray]:
    """``(class_names, palette)`` of ``layout`` for a network predicting ``num_classes`` classes: its names
    when it has exactly that many, its palette when it has at least that many colours. What it lacks (all,
    with no layout) is filled in here, the one place that decides it: generic names
    (:func:`generic_class_names`) and the VOC colours (:func:`voc_colormap`)."""
    names = generic_class_names(num_classes)
    palette = voc_colormap(max(num_classes, 1))
    if layout is not None and len(layout.class_names) == num_classes:
        names = list(layout.class_names)
    if layout is not None and len(layout.palette) >= num_classes:
        palette = np.asarray(layout.palette, np.uint8)
    return names, palette


def classes_record(names, palette) -> dict:
    """``{"class_names", "palette"}`` as files record them (segmentor and ONNX metadata): the names, and
    one ``[r, g, b]`` list per class."""
    names = list(names)
    return {"class_names": names, "palette": np.asarray(palette, np.uint8)[: len(names)].tolist()}


def layout_holding(dataset, cfg) -> DatasetLayout:
    """The layout ``dataset`` holds (a :class:`~furnace.datasets.SegDataset`'s ``.layout``); for a dataset
    without one (a stand-in in tests), :func:`layout_of` ``(cfg)``."""
    layout = getattr(dataset, "layout", None)
    return layout if layout is not None else layout_of(cfg)


_VOC_LIKE = dict(
    list_format="ids",
    train_list="train_aug.txt",
    val_list="val.txt",
    subset_pattern="subset_train_aug/train_aug_{kind}_1-{ratio}.txt",
    split_dirs={"train": "train_aug", "val": "val"},
    image_ext=".jpg",
    label_ext=".png",
)

LAYOUTS = {
    "voc": DatasetLayout(
        name="voc",
        dir_name="pascal_voc",
        class_names=VOC_CLASSES,
        palette=voc_colormap(21),
        ignore_color=tuple(int(c) for c in voc_colormap(256)[255]),
        **_VOC_LIKE,
    ),
    "city": DatasetLayout(
        name="city",
        dir_name="city",
        class_names=CITY_CLASSES,
        palette=np.array(CITY_COLORS, np.uint8),
        list_format="pairs",
        train_list="config_new/train.txt",
        val_list="config_new/val.txt",
        subset_pattern="config_new/subset_train/train_aug_{kind}_1-{ratio}.txt",
        image_ext=".png",
        label_ext=".png",
        ignore_color=(0, 0, 0),
    ),
    "synthetic": DatasetLayout(
        name="synthetic",
        dir_name="synthetic",
        class_names=SYNTHETIC_CLASSES,
        palette=np.array(SYNTHETIC_COLORS, np.uint8),
        **_VOC_LIKE,
    ),
}


def get_layout(name: str) -> DatasetLayout:
    """The layout of dataset ``name`` (voc | city | synthetic); UserError for any other name.
    A ``folder`` dataset's layout depends on its files: :func:`folder_layout` / :func:`layout_of`."""
    if name == "folder":
        raise UserError("dataset 'folder' has no fixed layout; it is read from the dataset root "
                        "(furnace.datasets.layouts.folder_layout(root) or layout_of(cfg))")
    try:
        return LAYOUTS[name]
    except KeyError:
        raise UserError(f"dataset {name!r} is unknown; choose one of {', '.join(LAYOUTS)}, folder") from None


def layout_of(cfg) -> DatasetLayout:
    """The layout ``cfg`` trains and evaluates with: a fixed one for voc / city / synthetic, for ``folder``
    the one read from ``cfg.data_root`` (classes.txt checked against ``cfg.num_classes``)."""
    if cfg.dataset == "folder":
        return folder_layout(cfg.data_root, int(cfg.num_classes), int(cfg.get("ignore_index", IGNORE_INDEX)))
    return get_layout(cfg.dataset)


def dataset_dir(cfg) -> Path:
    """``cfg.data_root / layout.dir_name``: the folder the lists' entries resolve into (a ``folder``
    dataset: ``data_root`` itself)."""
    if cfg.dataset == "folder":
        return Path(cfg.data_root)
    return Path(cfg.data_root) / get_layout(cfg.dataset).dir_name


# ----------------------------------------------------------------------------- your own data: "folder"

FOLDER_IMAGE_EXTS = IMAGE_EXTS  # the extensions the predictors take too
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True, eq=False)
class FolderLayout(DatasetLayout):
    """A user's dataset: ``images/<stem>.<ext>``, ``labels/<stem>.png`` (index PNG), ``classes.txt``;
    lists ``train.txt`` / ``val.txt`` of stems (or file names), partitions under ``splits/``."""

    def resolve(self, entry: str, root, split: str = "train") -> tuple[Path, Path, str]:
        root = Path(root)
        if Path(entry).suffix.lower() in FOLDER_IMAGE_EXTS:
            image, stem = root / "images" / entry, Path(entry).stem
        else:
            stem = entry
            image = next((root / "images" / f"{entry}{ext}" for ext in FOLDER_IMAGE_EXTS
                          if (root / "images" / f"{entry}{ext}").is_file()), root / "images" / f"{entry}.jpg")
        return image, root / "labels" / f"{stem}{self.label_ext}", stem


def read_classes(path) -> tuple[list[str], np.ndarray | None]:
    """``(names, palette)`` of a classes.txt: one class per line, ``name`` or ``name r g b`` (0-255).
    ``palette`` is None when no line gives a colour; lines without one get the VOC colour of their index."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: classes file not found; write one class name per line (optionally "
                        f"'name r g b'), in label-index order")
    names, colors = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        rgb = None
        if len(fields) >= 4 and all(f.isdigit() for f in fields[-3:]):
            rgb = tuple(int(f) for f in fields[-3:])
            if max(rgb) > 255:
                raise UserError(f"{path}:{lineno}: colour {rgb} has a value above 255; write 'name r g b' with 0-255")
            fields = fields[:-3]
        names.append(" ".join(fields))
        colors.append(rgb)
    if not names:
        raise UserError(f"{path}: classes file is empty; write one class name per line")
    if all(c is None for c in colors):
        return names, None
    default = voc_colormap(len(names))
    return names, np.array([c if c is not None else default[i] for i, c in enumerate(colors)], np.uint8)


def folder_layout(root, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX) -> FolderLayout:
    """The layout of a ``folder`` dataset at ``root`` (see :class:`FolderLayout`), its classes from
    ``root/classes.txt``; UserError when that file disagrees with ``num_classes`` or ``ignore_index``
    collides with a class."""
    path = Path(root) / CLASSES_FILE
    names, palette = read_classes(path)
    if num_classes is not None and num_classes != len(names):
        raise UserError(f"{path}: lists {len(names)} classes but num_classes={num_classes}; set "
                        f"num_classes={len(names)} (or NUM_CLASSES) or fix {CLASSES_FILE}")
    if not (len(names) <= ignore_index <= 255):
        raise UserError(f"config: ignore_index={ignore_index} must lie in {len(names)}..255 (above every class "
                        f"index of {path}); relabel the void pixels or choose another ignore_index")
    return FolderLayout(
        name="folder", dir_name="", class_names=tuple(names),
        palette=palette if palette is not None else voc_colormap(len(names)),
        list_format="ids", train_list="train.txt", val_list="val.txt",
        subset_pattern="splits/train_{kind}_1-{ratio}.txt", split_dirs={"train": "", "val": ""},
        image_ext=".jpg", label_ext=".png", ignore_index=int(ignore_index),
    )
