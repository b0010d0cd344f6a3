"""Validate a dataset folder and its split lists, naming every bad file.

    python -m furnace.datasets.check --dataset voc --root DATA/pascal_voc [--ratio 8]

checks the layout, the training/validation lists and the partition lists (format, entries
resolving to existing files, labeled/unlabeled disjoint), then reads every image and label:
readable, not truncated, label a single-channel index PNG, same size as its image, values within the
classes ∪ {255}. Prints each problem with its file; exit status 1 if there is any, else 0 and a
summary (2: a usage error, e.g. a missing classes.txt, in one line). :func:`check_dataset` is the quick version run at the start of training.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils import UserError, run_cli
from ._util import default_workers, progress_map
from .dataset import read_image, read_label
from .layouts import LAYOUTS, DatasetLayout, dataset_dir, folder_layout, layout_of
from .lists import read_list, require_split_lists
from .make_splits import DEFAULT_RATIOS

FAST_SAMPLES_PER_LIST = 8
MAX_REPORTED = 20


@dataclass
class ListSpec:
    """A list to check: its path, where its ids resolve (train | val), whether its entries need
    labels, and whether a missing file is a problem (standard partition lists are optional)."""

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
    """Read one sample fully; returns (problems, bool (256,) of label values present or None)."""
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
        problems.append(
            f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); they must have the same size"
        )
    present = None if label is None else np.bincount(label.ravel(), minlength=256) > 0
    return problems, present


def check_lists(
    layout: DatasetLayout,
    root,
    specs: list[ListSpec],
    *,
    fast: bool = False,
    workers: int = 0,
    progress: bool = False,
    pairs: list[tuple[ListSpec, ListSpec]] = (),
) -> CheckReport:
    """Check ``specs`` of a dataset at ``root``; every problem names its file.

    All list entries must resolve to existing files. ``fast`` reads only a deterministic sample of
    ``FAST_SAMPLES_PER_LIST`` evenly spaced entries per list; otherwise every sample is read (with a
    process pool when ``workers`` > 0). ``pairs`` are (labeled, unlabeled) lists that must be disjoint.
    """
    report = CheckReport()
    root = Path(root)
    if not root.is_dir():
        report.problems.append(
            f"{root}: dataset folder not found; set data_root (or --root) to the folder holding {layout.dir_name}/"
        )
        return report
    entries = _read_lists(layout, specs, pairs, report)
    samples, origin, to_read = _samples_of(layout, root, specs, entries, fast)
    missing = _find_missing(samples, origin, report)
    jobs = [
        (image_path, label_path, samples[(image_path, label_path)], layout.num_classes, layout.ignore_index)
        for image_path, label_path in to_read
        if image_path not in missing and not (samples[(image_path, label_path)] and label_path in missing)
    ]
    results = progress_map(_check_sample, jobs, workers, desc="reading", progress=progress)
    seen = np.zeros(256, bool)
    for problems, present in results:
        report.problems.extend(problems)
        if present is not None:
            seen |= present
    report.samples_read = len(jobs)
    report.classes_seen = seen
    return report


def _read_lists(layout: DatasetLayout, specs, pairs, report: CheckReport) -> dict:
    """``{path: entries}`` of the lists of ``specs`` that read cleanly (an optional list that does not
    exist is skipped); unreadable lists, duplicate entries and labeled/unlabeled overlaps of ``pairs``
    go to ``report``."""
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
        if labeled.path in entries and unlabeled.path in entries:
            both = sorted(set(entries[labeled.path]) & set(entries[unlabeled.path]))
            if both:
                report.problems.append(
                    f"{unlabeled.path}: {len(both)} entries are also in the labeled list {labeled.path} "
                    f"(e.g. {both[0]!r}); a partition's labeled and unlabeled lists must be disjoint"
                )
    return entries


def _samples_of(layout: DatasetLayout, root: Path, specs, entries: dict, fast: bool):
    """``(samples, origin, to_read)``: the unique ``(image, label)`` samples over all lists, each True when
    any list using it needs its label; the first list naming each (for messages); the samples to read
    (all, or ``fast``: ``FAST_SAMPLES_PER_LIST`` evenly spaced ones per list)."""
    samples: dict[tuple[Path, Path], bool] = {}
    origin: dict[tuple[Path, Path], Path] = {}
    to_read: dict[tuple[Path, Path], None] = {}
    for spec in specs:
        listed = entries.get(spec.path, [])
        for entry in listed:
            image_path, label_path, _ = layout.resolve(entry, root, spec.split)
            key = (image_path, label_path)
            samples[key] = samples.get(key, False) or spec.with_label
            origin.setdefault(key, spec.path)
        if fast and listed:
            picks = np.unique(
                np.linspace(0, len(listed) - 1, min(FAST_SAMPLES_PER_LIST, len(listed))).round().astype(int)
            )
            for i in picks:
                image_path, label_path, _ = layout.resolve(listed[i], root, spec.split)
                to_read[(image_path, label_path)] = None
    if not fast:
        to_read = dict.fromkeys(samples)
    return samples, origin, to_read


def _find_missing(samples: dict, origin: dict, report: CheckReport) -> set:
    """The files of ``samples`` that do not exist (a label only where it is needed), each reported with
    the list naming it; counts the files checked."""
    missing = set()
    for (image_path, label_path), with_label in samples.items():
        for path, what in ((image_path, "image"), (label_path, "label") if with_label else (None, None)):
            if path is not None and not os.path.isfile(path):
                missing.add(path)
                report.problems.append(f"{path}: {what} file not found (listed in {origin[image_path, label_path]})")
        report.files_checked += 1 + int(with_label)
    return missing


def standard_specs(layout: DatasetLayout, root, ratio: int | None = None) -> tuple[list[ListSpec], list]:
    """The dataset's standard lists: train and val (required), and the partition lists of ``ratio``
    (required) or of every standard ratio present (optional)."""
    root = Path(root)
    specs = [
        ListSpec(root / layout.train_list, "train"),
        ListSpec(root / layout.val_list, "val"),
    ]
    pairs = []
    for r in [ratio] if ratio else DEFAULT_RATIOS:
        if r == 1:
            continue
        labeled = ListSpec(root / layout.subset_list("labeled", r), "train", True, bool(ratio))
        # An unlabeled entry needs no label file.
        unlabeled = ListSpec(root / layout.subset_list("unlabeled", r), "train", False, bool(ratio))
        specs += [labeled, unlabeled]
        pairs.append((labeled, unlabeled))
    return specs, pairs


def check_dataset(cfg, fast: bool = True) -> CheckReport:
    """Check the lists ``cfg`` trains and evaluates with (:func:`split_paths`) before training.

    Fast path: lists readable and well-formed, every listed file exists, and a small deterministic
    sample of samples fully read. Raises one UserError listing the first problems and their count;
    returns the report when all is well.
    """
    layout = layout_of(cfg)
    root = dataset_dir(cfg)
    labeled, unlabeled, val = require_split_lists(cfg)  # a missing list is one clear error, not one of many
    specs = [
        ListSpec(labeled, "train"),
        ListSpec(unlabeled, "train", with_label=False),
        ListSpec(val, "val"),
    ]
    pairs = [] if labeled == unlabeled else [(specs[0], specs[1])]
    report = check_lists(layout, root, specs, fast=fast, pairs=pairs)
    if int(cfg.num_classes) != layout.num_classes:
        report.problems.insert(
            0,
            f"config: num_classes={cfg.num_classes} but dataset {cfg.dataset!r} has "
            f"{layout.num_classes} classes; set num_classes={layout.num_classes}",
        )
    if report.problems:
        shown = "\n  - ".join(report.problems[:MAX_REPORTED])
        more = f"\n  ... and {len(report.problems) - MAX_REPORTED} more" if len(report.problems) > MAX_REPORTED else ""
        raise UserError(
            f"dataset check failed for {root} ({len(report.problems)} problem(s)):\n  - {shown}{more}\n"
            f"Fix the files, or run `python -m furnace.datasets.check --dataset {cfg.dataset} --root {root}` for a "
            f"full report; check_data=False skips this check"
        )
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m furnace.datasets.check",
        description="Validate a dataset folder: layout, split lists, image readability, image/label sizes and "
        "label values. Prints every problem with its file; exit status 1 if any.",
    )
    parser.add_argument("--dataset", required=True, choices=("voc", "city", "synthetic", "folder"),
                        help="folder: your own data (images/, labels/, classes.txt, train.txt, val.txt, splits/)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="folder: the class count the config uses (checked against classes.txt)")
    parser.add_argument("--ignore-index", type=int, default=255, help="folder: the void label value (default 255)")
    parser.add_argument("--root", required=True, help="dataset folder (e.g. DATA/pascal_voc); DATA/ itself also works")
    parser.add_argument(
        "--ratio",
        type=int,
        default=None,
        help="require the 1/N partition lists (default: check those present for 16, 8, 4, 2)",
    )
    parser.add_argument(
        "--fast", action="store_true", help="read only a sample of the files (existence is always checked)"
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="reader processes (0 = none)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _check_command(args))


def _check_command(args) -> int:
    """The check CLI after parsing: 1 when the dataset has problems (each printed), 0 when it is fine."""
    layout = (folder_layout(args.root, args.num_classes, args.ignore_index) if args.dataset == "folder"
              else LAYOUTS[args.dataset])
    root = Path(args.root)
    if not (root / layout.train_list).exists() and (root / layout.dir_name / layout.train_list).exists():
        root = root / layout.dir_name
    specs, pairs = standard_specs(layout, root, args.ratio)
    report = check_lists(
        layout, root, specs, fast=args.fast, workers=args.workers, progress=sys.stderr.isatty(), pairs=pairs
    )
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"{len(report.problems)} problem(s) found in {root}", file=sys.stderr)
        return 1
    lists = ", ".join(f"{p.relative_to(root) if p.is_relative_to(root) else p} ({n})" for p, n in report.lists.items())
    classes = [
        name for c, name in enumerate(layout.class_names) if report.classes_seen is not None and report.classes_seen[c]
    ]
    absent = [name for name in layout.class_names if name not in classes]
    print(
        f"OK: {root} ({args.dataset}): lists {lists}; {report.files_checked} files exist; "
        f"{report.samples_read} samples read; classes seen {len(classes)}/{layout.num_classes}"
        + (f" (never seen: {', '.join(absent)})" if absent and not args.fast else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
