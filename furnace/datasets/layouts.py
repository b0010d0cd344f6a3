"""Per-dataset layouts: where images, labels and split lists live under ``data_root / dir_name``, how a list
entry resolves into files, the class names and palette. The lists themselves are read by :mod:`.lists`."""

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.drawing import colorize  # noqa: F401 - re-exported: predictions and datasets share it
from ..runtime.images import IMAGE_EXTS
from ..utils import IGNORE_INDEX, UserError


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colormap: (n, 3) uint8 RGB, row i the colour of index i (n <= 256)."""
    index, cmap = np.arange(n), np.zeros((n, 3), np.uint8)
    for k in range(8):  # bit 3k + c of the index becomes bit 7 - k of channel c
        for c in range(3):
            cmap[:, c] |= (((index >> (3 * k + c)) & 1) << (7 - k)).astype(np.uint8)
    return cmap


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

# The 19 Cityscapes evaluation classes in trainId order: (official labelId, name, official colour).
_CITY_TABLE = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)), (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)), (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)), (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)), (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)),
)
_, CITY_CLASSES, CITY_COLORS = zip(*_CITY_TABLE)
# Official labelId -> trainId; every other id (unlabeled, ego vehicle, ..., license plate) is void (255).
CITY_LABELID_TO_TRAINID = {label_id: train_id for train_id, (label_id, _, _) in enumerate(_CITY_TABLE)}

# Background, then {striped, dotted, grid} x {dark pattern on a light base, light pattern on a dark base}.
_SYNTHETIC_TABLE = (("background", (0, 0, 0)), ("stripes_dark", (230, 25, 75)), ("stripes_light", (245, 130, 48)),
                    ("dots_dark", (60, 180, 75)), ("dots_light", (0, 130, 200)), ("grid_dark", (145, 30, 180)),
                    ("grid_light", (240, 50, 230)))
SYNTHETIC_CLASSES, SYNTHETIC_COLORS = zip(*_SYNTHETIC_TABLE)


@dataclass(frozen=True, eq=False)
class DatasetLayout:
    """How one dataset is stored under ``data_root / dir_name``: ``list_format`` ids | pairs | stems (:mod:`.lists`),
    ``split_dirs`` where train/val ids resolve, list paths relative to the dataset folder."""

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
        """``(image_path, label_path, name)`` of a list entry: an id (in ``split``'s folder) or ``"img<TAB>label"``."""
        root = Path(root)
        if self.list_format == "ids":
            folder = root / self.split_dirs[split]
            return folder / "image" / f"{entry}{self.image_ext}", folder / "label" / f"{entry}{self.label_ext}", entry
        image, label = entry.split("\t")
        return root / image.lstrip("/"), root / label.lstrip("/"), Path(image).stem

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """(H, W) index map -> (H, W, 3) uint8 RGB; ignore and unknown values get ``ignore_color``."""
        return colorize(label, self.palette[: self.num_classes], self.ignore_color)


def generic_class_names(num_classes: int) -> list[str]:
    """``class_0``, ``class_1``, ...: the names of classes no layout names."""
    return [f"class_{i}" for i in range(num_classes)]


def classes_and_palette(layout: DatasetLayout | None, num_classes: int) -> tuple[list[str], np.ndarray]:
    """``(class_names, palette)`` for ``num_classes`` outputs: the layout's where they fit, else generic / VOC."""
    names = generic_class_names(num_classes)
    palette = voc_colormap(max(num_classes, 1))
    if layout is not None and len(layout.class_names) == num_classes:
        names = list(layout.class_names)
    if layout is not None and len(layout.palette) >= num_classes:
        palette = np.asarray(layout.palette, np.uint8)
    return names, palette


def classes_record(names, palette) -> dict:
    """``{"class_names", "palette"}`` as files (segmentor, ONNX metadata) record them: one [r, g, b] per class."""
    names = list(names)
    return {"class_names": names, "palette": np.asarray(palette, np.uint8)[: len(names)].tolist()}


_VOC_LIKE = dict(list_format="ids", train_list="train_aug.txt", val_list="val.txt",
                 subset_pattern="subset_train_aug/train_aug_{kind}_1-{ratio}.txt",
                 split_dirs={"train": "train_aug", "val": "val"})

LAYOUTS = {
    "voc": DatasetLayout(name="voc", dir_name="pascal_voc", class_names=VOC_CLASSES, palette=voc_colormap(21),
                         ignore_color=tuple(int(c) for c in voc_colormap(256)[255]), **_VOC_LIKE),
    "city": DatasetLayout(name="city", dir_name="city", class_names=CITY_CLASSES,
                          palette=np.array(CITY_COLORS, np.uint8), list_format="pairs",
                          train_list="config_new/train.txt", val_list="config_new/val.txt",
                          subset_pattern="config_new/subset_train/train_aug_{kind}_1-{ratio}.txt", image_ext=".png",
                          ignore_color=(0, 0, 0)),
    "synthetic": DatasetLayout(name="synthetic", dir_name="synthetic", class_names=SYNTHETIC_CLASSES,
                               palette=np.array(SYNTHETIC_COLORS, np.uint8), **_VOC_LIKE),
}


def layout_of(cfg) -> DatasetLayout:
    """``LAYOUTS[cfg.dataset]``, or for ``folder`` the one read from ``cfg.data_root`` (checked against the config)."""
    if cfg.dataset == "folder":
        return folder_layout(cfg.data_root, int(cfg.num_classes), int(cfg.ignore_index))
    return LAYOUTS[cfg.dataset]


def dataset_dir(cfg) -> Path:
    """The folder list entries resolve into: ``cfg.data_root / layout.dir_name`` (``folder``: data_root)."""
    return Path(cfg.data_root) / ("" if cfg.dataset == "folder" else LAYOUTS[cfg.dataset].dir_name)


# ----------------------------------------------------------------------------- your own data: "folder"

FOLDER_IMAGE_EXTS = IMAGE_EXTS  # the extensions the predictors take too, matched in any case
CLASSES_FILE = "classes.txt"


@functools.lru_cache(maxsize=8)
def _scan(folder: str, mtime_ns: int, exts: tuple) -> dict:
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()
                   and os.path.splitext(e.name)[1].lower() in exts)
    stems: dict = {}
    for name in names:
        stems.setdefault(os.path.splitext(name)[0], []).append(name)
    return {stem: tuple(found) for stem, found in stems.items()}


def folder_files(folder, exts=FOLDER_IMAGE_EXTS) -> dict[str, tuple[str, ...]]:
    """``{stem: file names}`` of the files in ``folder`` whose extension, in any case, is one of ``exts`` (hidden
    files such as macOS ``._x.jpg`` skipped; names sorted); ``{}`` without the folder. Scanned again when the
    folder's modification time changes."""
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return {}
    return _scan(str(folder), mtime, tuple(exts))


@dataclass(frozen=True, eq=False)
class FolderLayout(DatasetLayout):
    """A user's dataset: ``images/<stem>.<ext>``, ``labels/<stem>.png`` (extensions in any case), ``classes.txt``;
    lists of stems (:mod:`.lists` format ``stems``). Its natural partition (labeled_ratio 0) is
    ``splits/labeled.txt`` (images with a label) and ``splits/unlabeled.txt`` (images without one)."""

    def subset_list(self, kind: str, ratio: int) -> str:
        if int(ratio) == 0 and kind in ("labeled", "unlabeled"):
            return f"splits/{kind}.txt"
        return super().subset_list(kind, ratio)

    def resolve(self, entry: str, root, split: str = "train") -> tuple[Path, Path, str]:
        images, labels = Path(root) / "images", Path(root) / "labels"
        found = folder_files(images).get(entry)
        if found:
            image, stem = images / found[0], entry
        elif Path(entry).suffix.lower() in FOLDER_IMAGE_EXTS:  # a list written with file names
            image, stem = images / entry, Path(entry).stem
        else:
            image, stem = images / f"{entry}.*", entry  # no such image: the message names this pattern
        label = folder_files(labels, (self.label_ext,)).get(stem)
        return image, labels / (label[0] if label else f"{stem}{self.label_ext}"), stem


def read_classes(path) -> tuple[list[str], np.ndarray | None]:
    """``(names, palette)`` of a classes.txt of ``name [r g b]`` lines; palette None when no line has a colour."""
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
    """The :class:`FolderLayout` at ``root``; UserError when classes.txt disagrees with the arguments."""
    path = Path(root) / CLASSES_FILE
    if not Path(root).is_dir():
        raise UserError(f"{root}: dataset folder not found; point data_root (DATA_ROOT, check's --root) at the folder "
                        f"holding images/, labels/ and {CLASSES_FILE}")
    names, palette = read_classes(path)
    if num_classes is not None and num_classes != len(names):
        raise UserError(f"{path}: lists {len(names)} classes but num_classes={num_classes}; set "
                        f"num_classes={len(names)} (or NUM_CLASSES) or fix {CLASSES_FILE}")
    if not (len(names) <= ignore_index <= 255):
        raise UserError(f"config: ignore_index={ignore_index} must lie in {len(names)}..255 (above every class "
                        f"index of {path}); relabel the void pixels or choose another ignore_index")
    return FolderLayout(name="folder", dir_name="", class_names=tuple(names),
                        palette=palette if palette is not None else voc_colormap(len(names)), list_format="stems",
                        train_list="train.txt", val_list="val.txt", subset_pattern="splits/train_{kind}_1-{ratio}.txt",
                        split_dirs={"train": "", "val": ""}, ignore_index=int(ignore_index))
