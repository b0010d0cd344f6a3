"""Validate a dataset folder and its split lists, naming every bad file:
``python -m furnace.datasets.check --dataset voc --root DATA/pascal_voc [--ratio 8]``.

Lists: format, duplicates, files present, labeled/unlabeled disjoint; samples: readable, label an index PNG of its
image's size with values in the classes ∪ {255}. Exit status 1 with every problem printed, 0 with a summary, 2 on
a usage error. :func:`check_dataset` is the quick version run before training.
"""

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils import UserError, run_cli
from ._util import DEFAULT_WORKERS, progress_map
from .dataset import read_image, read_label
from .layouts import LAYOUTS, DatasetLayout, dataset_dir, folder_layout, layout_of
from .lists import make_splits_command, read_list, require_split_lists
from .make_splits import DEFAULT_RATIOS

FAST_SAMPLES_PER_LIST = 8
MAX_REPORTED = 20


@dataclass
class ListSpec:
    """A list to check: where its ids resolve (train | val), whether it needs labels, whether it must exist."""

    path: Path
    split: str
    with_label: bool = True
    required: bool = True


@dataclass
class CheckReport:
    problems: list = field(default_factory=list)
    lists: dict = field(default_factory=dict)  # path -> number of entries
    files_checked: int = 0
    samples_read: int = 0
    classes_seen: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sample(job) -> tuple[list[str], np.ndarray | None]:
    """Read one sample fully: (problems, (256,) bool of the label values present, or None)."""
    image_path, label_path, with_label, num_classes, ignore = job
    problems, image, label = [], None, None
    try:
        image = read_image(image_path)
    except UserError as err:
        problems.append(str(err))
    if with_label:
        try:
            label = read_label(label_path, num_classes, ignore)
        except UserError as err:
            problems.append(str(err))
    if image is not None and label is not None and image.shape[:2] != label.shape:
        problems.append(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]} (width x height); they must have the same size")
    return problems, None if label is None else np.bincount(label.ravel(), minlength=256) > 0


def check_lists(layout: DatasetLayout, root, specs: list[ListSpec], *, fast: bool = False, workers: int = 0,
                progress: bool = False, pairs: list[tuple[ListSpec, ListSpec]] = ()) -> CheckReport:
    """Check ``specs`` at ``root``: files exist, samples (``fast``: a few per list) read, ``pairs`` disjoint."""
    report = CheckReport()
    root = Path(root)
    if not root.is_dir():
        report.problems.append(
            f"{root}: dataset folder not found; set data_root (or --root) to the folder holding {layout.dir_name}/")
        return report
    entries = _read_lists(layout, specs, pairs, report)
    needs_label, origin, picked = {}, {}, {}  # per (image, label): any list needs the label; the first list naming it
    for spec in specs:
        keys = [layout.resolve(entry, root, spec.split)[:2] for entry in entries.get(spec.path, [])]
        for key in keys:
            needs_label[key] = needs_label.get(key, False) or spec.with_label
            origin.setdefault(key, spec.path)
        if fast and keys:
            picks = np.unique(np.linspace(0, len(keys) - 1, min(FAST_SAMPLES_PER_LIST, len(keys))).round().astype(int))
            picked.update(dict.fromkeys(keys[i] for i in picks))
    restore = "restore it or remove the entry from the list"
    fix = {"image": restore, "label": restore if layout.name != "folder" else  # a folder image may be unlabeled
           f"restore it, or write the lists again with `{make_splits_command(layout, root, 0)}` (an image without "
           f"a label is unlabeled)"}
    missing = set()
    for key, with_label in needs_label.items():
        files = [(key[0], "image")] + ([(key[1], "label")] if with_label else [])
        for path, what in files:
            if not os.path.isfile(path):
                missing.add(path)
                report.problems.append(f"{path}: {what} file not found (listed in {origin[key]}); {fix[what]}")
        report.files_checked += len(files)
    jobs = [(image, label, needs_label[image, label], layout.num_classes, layout.ignore_index)
            for image, label in (picked if fast else needs_label)
            if image not in missing and not (needs_label[image, label] and label in missing)]
    report.classes_seen = np.zeros(256, bool)
    for problems, present in progress_map(_check_sample, jobs, workers, desc="reading", progress=progress):
        report.problems.extend(problems)
        if present is not None:
            report.classes_seen |= present
    report.samples_read = len(jobs)
    return report


def _read_lists(layout: DatasetLayout, specs, pairs, report: CheckReport) -> dict:
    """``{path: entries}`` of the lists that read cleanly; their problems and overlaps go to ``report``."""
    entries = {}
    for spec in specs:
        if not spec.path.is_file() and not spec.required:
            continue
        try:
            entries[spec.path] = read_list(spec.path, layout.list_format)
        except UserError as err:
            report.problems.append(str(err))
            continue
        report.lists[spec.path] = len(entries[spec.path])
        duplicates = len(entries[spec.path]) - len(set(entries[spec.path]))
        if duplicates:
            report.problems.append(f"{spec.path}: {duplicates} duplicate entries; each sample should appear once")
    for labeled, unlabeled in pairs:
        both = sorted(set(entries.get(labeled.path, ())) & set(entries.get(unlabeled.path, ())))
        if both:
            report.problems.append(
                f"{unlabeled.path}: {len(both)} entries are also in the labeled list {labeled.path} "
                f"(e.g. {both[0]!r}); a partition's labeled and unlabeled lists must be disjoint")
    return entries


def check_dataset(cfg, fast: bool = True) -> CheckReport:
    """The quick :func:`check_lists` of the lists ``cfg`` uses: the report, or one UserError listing the problems."""
    layout = layout_of(cfg)
    root = dataset_dir(cfg)
    labeled, unlabeled, val = require_split_lists(cfg)  # a missing list is one clear error, not one of many
    specs = [ListSpec(labeled, "train"), ListSpec(unlabeled, "train", with_label=False), ListSpec(val, "val")]
    report = check_lists(layout, root, specs, fast=fast, pairs=[] if labeled == unlabeled else [(specs[0], specs[1])])
    if int(cfg.num_classes) != layout.num_classes:
        report.problems.insert(0, f"config: num_classes={cfg.num_classes} but dataset {cfg.dataset!r} has "
                                  f"{layout.num_classes} classes; set num_classes={layout.num_classes}")
    if len(report.problems) == 1:
        raise UserError(f"dataset check failed for {root}: {report.problems[0]}. For a full report run "
                        f"`python -m furnace.datasets.check --dataset {cfg.dataset} --root {root}`; check_data=False "
                        f"skips this check")
    if report.problems:
        shown = "\n  - ".join(report.problems[:MAX_REPORTED])
        more = f"\n  ... and {len(report.problems) - MAX_REPORTED} more" if len(report.problems) > MAX_REPORTED else ""
        raise UserError(
            f"dataset check failed for {root} ({len(report.problems)} problem(s)):\n  - {shown}{more}\n"
            f"Fix the files, or run `python -m furnace.datasets.check --dataset {cfg.dataset} --root {root}` for a "
            f"full report; check_data=False skips this check")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.datasets.check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=("voc", "city", "synthetic", "folder"),
                        help="folder: your own data (images/, labels/, classes.txt, val.txt, splits/)")
    parser.add_argument("--num-classes", type=int, default=None, help="folder: the config's class count")
    parser.add_argument("--ignore-index", type=int, default=255, help="folder: the void label value (default 255)")
    parser.add_argument("--root", required=True, help="dataset folder (e.g. DATA/pascal_voc) or DATA/ itself")
    parser.add_argument("--ratio", type=int, default=None,
                        help="require the 1/N partition lists, 0: a folder's natural splits/{labeled,unlabeled}.txt "
                             "(default: check those present of 16, 8, 4, 2 and 0)")
    parser.add_argument("--fast", action="store_true", help="read only a sample of the files (all must exist)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="reader processes (0 = none)")
    args = parser.parse_args(argv)

    def body() -> int:
        layout = (folder_layout(args.root, args.num_classes, args.ignore_index) if args.dataset == "folder"
                  else LAYOUTS[args.dataset])
        root = Path(args.root)
        if not (root / layout.train_list).exists() and (root / layout.dir_name / layout.train_list).exists():
            root = root / layout.dir_name
        folder = args.dataset == "folder"  # its train.txt exists only for simulated partitions
        specs = [ListSpec(root / layout.train_list, "train", required=not folder),
                 ListSpec(root / layout.val_list, "val")]
        pairs, given = [], args.ratio is not None
        for r in [args.ratio] if given else [*DEFAULT_RATIOS, *([0] if folder else [])]:  # a given ratio's must exist
            if r != 1:
                pairs.append((ListSpec(root / layout.subset_list("labeled", r), "train", True, given),
                              ListSpec(root / layout.subset_list("unlabeled", r), "train", False, given)))
                specs += pairs[-1]
        report = check_lists(layout, root, specs, fast=args.fast, workers=args.workers, progress=sys.stderr.isatty(),
                             pairs=pairs)
        for problem in report.problems:
            print(problem)
        if report.problems:
            print(f"{len(report.problems)} problem(s) found in {root}", file=sys.stderr)
            return 1
        lists = ", ".join(f"{p.relative_to(root) if p.is_relative_to(root) else p} ({n})"
                          for p, n in report.lists.items())
        classes = [name for c, name in enumerate(layout.class_names) if report.classes_seen[c]]
        absent = [name for name in layout.class_names if name not in classes]
        print(f"OK: {root} ({args.dataset}): lists {lists}; {report.files_checked} files exist; "
              f"{report.samples_read} samples read; classes seen {len(classes)}/{layout.num_classes}"
              + (f" (never seen: {', '.join(absent)})" if absent and not args.fast else ""))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
