"""Split lists: where a config's lists are, reading them strictly, and how to make missing ones.

Formats (SPEC §2): ``ids`` (VOC, synthetic), one bare id per line, resolved by the layout; ``pairs``
(Cityscapes), ``/images/train/x.png<TAB>/segmentation/train/x_gtFine.png``, relative to the dataset folder;
``stems`` (folder datasets), one file stem of ``images/`` per line, exactly as in the file name (spaces allowed,
no TAB or slash).
"""

import os
import re
from pathlib import Path

from ..utils import UserError
from .layouts import DatasetLayout, dataset_dir, layout_of

_LIST_KEYS = ("labeled_list", "unlabeled_list", "val_list")


def split_paths(cfg) -> tuple[Path, Path, Path]:
    """``(labeled_list, unlabeled_list, val_list)`` of ``cfg.labeled_ratio`` or set in ``cfg`` (relative to root);
    labeled_ratio 0 (folder datasets): the natural partition's lists."""
    layout = layout_of(cfg)
    root = dataset_dir(cfg)
    ratio = int(cfg.labeled_ratio)
    defaults = [layout.subset_list(k, ratio) if ratio != 1 else layout.train_list for k in ("labeled", "unlabeled")]
    return tuple(root / (cfg.get(key, "") or default) for key, default in zip(_LIST_KEYS, defaults + [layout.val_list]))


def partition_ratios(layout: DatasetLayout, root) -> list[int]:
    """The N of every 1/N labeled partition list present under ``root``, descending."""
    folder = Path(root) / layout.subset_dir
    before, after = os.path.basename(layout.subset_pattern).replace("{kind}", "labeled").split("{ratio}")
    pattern = re.compile(re.escape(before) + r"(\d+)" + re.escape(after))
    found = [pattern.fullmatch(p.name) for p in folder.glob("*")] if folder.is_dir() else []
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def require_split_lists(cfg, with_val: bool = True) -> tuple[Path, Path, Path]:
    """:func:`split_paths` once the lists exist, else a UserError on the first missing one saying what to do."""
    layout, root, paths = layout_of(cfg), dataset_dir(cfg), split_paths(cfg)
    for key, path in zip(_LIST_KEYS[: 3 if with_val else 2], paths):
        if path.is_file():
            continue
        if cfg.get(key, ""):
            raise UserError(f"{path}: split list not found (config {key}={cfg[key]!r}; relative paths start at {root})")
        ratio = int(cfg.labeled_ratio)
        if layout.name == "folder":
            present = partition_ratios(layout, root)
            other = f" or set labeled_ratio to {' / '.join(map(str, present))}" if present and ratio == 0 else ""
            raise UserError(f"{path}: split list not found; write the lists from images/ and labels/ with "
                            f"`{make_splits_command(layout, root, ratio)}`{other}")
        train_list = root / layout.train_list
        if not train_list.is_file():
            raise UserError(f"{path}: split list not found, nor the training list {train_list}; set data_root to the "
                            f"folder holding {layout.dir_name}/ (now {cfg.data_root!r}) and see DATA/README.md")
        if key == "val_list" or ratio == 1:
            raise UserError(f"{path}: split list not found; restore it from the dataset's list files")
        present = partition_ratios(layout, root)
        have, alternative = "no partition lists exist", ""
        if present:
            have = f"the partitions present are {', '.join(f'1/{r}' for r in present)}"
            alternative = f" or set labeled_ratio to {' / '.join(map(str, present))}"
        raise UserError(f"{path}: split list for labeled_ratio={ratio} not found ({have}); make it with "
                        f"`{make_splits_command(layout, root, ratio)}`{alternative}")
    return paths


def make_splits_command(layout: DatasetLayout, root, ratio: int) -> str:
    """The make_splits command line that writes the 1/``ratio`` partition lists of ``layout`` at ``root`` (0: the
    natural partition of a folder dataset)."""
    if layout.name == "folder":
        return f"python -m furnace.datasets.make_splits --folder {root}" + (f" --ratios {ratio}" if ratio else "")
    return (f"python -m furnace.datasets.make_splits --list {Path(root) / layout.train_list} "
            f"--out {Path(root) / layout.subset_dir} --ratios {ratio}")


def read_list(path: str | os.PathLike, list_format: str) -> list[str]:
    """The entries of a split list in ``list_format``; UserError naming the file (and line) when it is unfit."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: split list not found; check data_root / the list paths in the config")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: split list cannot be read as UTF-8 text ({err})") from err
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        problem = _line_problem(line, list_format)
        if problem:
            raise UserError(f"{path}:{lineno}: {problem}: {line[:120]!r}")
        entries.append(line)
    if not entries:
        raise UserError(f"{path}: split list is empty; it must hold one entry per line")
    return entries


def _line_problem(line: str, list_format: str) -> str:
    if list_format == "ids":
        if "\t" in line or " " in line:
            return ("expected one bare id per line (VOC format), found several fields; is this a "
                    "Cityscapes-style list given for a VOC-style dataset?")
        if "/" in line or "\\" in line or line.startswith("."):
            return "expected a bare id (no folder, no extension), e.g. 2007_000032"
        return ""
    if list_format == "stems":
        if "\t" in line or "/" in line or "\\" in line:
            return ("expected one image file stem of images/ per line (spaces are fine; no TAB, no folder), "
                    "e.g. IMG_0001 or 'photo 1'")
        return ""
    if list_format == "pairs":
        fields = line.split("\t")
        if len(fields) != 2:
            hint = " (a bare id: is this a VOC-style list?)" if len(fields) == 1 and " " not in line else ""
            return f"expected two TAB-separated paths 'image<TAB>label' (Cityscapes format){hint}"
        if not all(f.startswith("/") and len(f) > 1 and f == f.strip() for f in fields):
            return "both paths must start with '/' (relative to the dataset folder) and have no spaces around them"
        return ""
    raise ValueError(f"unknown list format {list_format!r}")


def detect_list_format(path: str | os.PathLike) -> str:
    """``"pairs"`` when the first non-blank line of the list holds a TAB, else ``"ids"``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: split list not found")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            return "pairs" if "\t" in line else "ids"
    raise UserError(f"{path}: split list is empty; it must hold one entry per line")
