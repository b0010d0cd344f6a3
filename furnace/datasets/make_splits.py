"""Make labeled/unlabeled partition lists from a training list.

    python -m furnace.datasets.make_splits --list DATA/pascal_voc/train_aug.txt \\
        --out DATA/pascal_voc/subset_train_aug --seed 0 --ratios 16 8 4 2

writes ``<prefix>_labeled_1-N.txt`` and ``<prefix>_unlabeled_1-N.txt`` for each N. The 1/N partition
labels ``ceil(n / N)`` entries — the rule behind the community's standard splits (VOC 10,582 ->
662 / 1,323 / 2,646 / 5,291; Cityscapes 2,975 -> 186 / 372 / 744 / 1,488 for 1/16, 1/8, 1/4, 1/2).
The labeled entries are the first ``ceil(n / N)`` of one seeded permutation, so the partitions are
nested (1/16 ⊂ 1/8 ⊂ 1/4 ⊂ 1/2); the unlabeled list is the rest. Entries keep the training list's
order and format (bare ids or TAB-separated pairs).

    python -m furnace.datasets.make_splits --folder DATA/custom --seed 0 --ratios 8

does the same for your own dataset (``images/``, ``labels/``, ``classes.txt``): it first writes
``train.txt`` / ``val.txt`` from the images when they are absent, then ``splits/train_{labeled,unlabeled}_1-N.txt``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from ..utils import UserError, run_cli
from .layouts import FOLDER_IMAGE_EXTS
from .lists import detect_list_format, read_list

DEFAULT_RATIOS = (16, 8, 4, 2)


def labeled_count(n: int, ratio: int) -> int:
    """Number of labeled entries of the 1/``ratio`` partition of ``n`` entries: ``ceil(n / ratio)``."""
    return math.ceil(n / ratio)


def make_splits(entries: list[str], ratios=DEFAULT_RATIOS, seed: int = 0) -> dict[int, tuple[list[str], list[str]]]:
    """``{ratio: (labeled, unlabeled)}`` for a list of unique entries.

    Deterministic in (entries, seed); labeled and unlabeled are disjoint, their union is ``entries``,
    both keep the input order, and labeled sets of larger fractions contain those of smaller ones.
    """
    if len(set(entries)) != len(entries):
        raise UserError("the training list holds duplicate entries; partitions need unique entries")
    rank = np.empty(len(entries), np.int64)
    rank[np.random.default_rng(seed).permutation(len(entries))] = np.arange(len(entries))
    splits = {}
    for ratio in ratios:
        if int(ratio) < 1:
            raise UserError(f"ratio {ratio} must be a positive integer (1/N of the list is labeled)")
        cut = labeled_count(len(entries), int(ratio))
        labeled = [e for e, r in zip(entries, rank) if r < cut]
        unlabeled = [e for e, r in zip(entries, rank) if r >= cut]
        splits[int(ratio)] = (labeled, unlabeled)
    return splits


def write_splits(
    list_path, out_dir, ratios=DEFAULT_RATIOS, seed: int = 0, prefix: str = "train_aug", list_format: str | None = None
) -> dict[int, tuple[Path, Path]]:
    """Read ``list_path`` (format auto-detected unless given) and write the partition lists into
    ``out_dir``; returns ``{ratio: (labeled_path, unlabeled_path)}``."""
    list_format = list_format or detect_list_format(list_path)
    entries = read_list(list_path, list_format)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for ratio, (labeled, unlabeled) in make_splits(entries, ratios, seed).items():
        paths = (out_dir / f"{prefix}_labeled_1-{ratio}.txt", out_dir / f"{prefix}_unlabeled_1-{ratio}.txt")
        for path, part in zip(paths, (labeled, unlabeled)):
            path.write_text("".join(f"{e}\n" for e in part), encoding="utf-8")
        written[ratio] = paths
    return written


def folder_lists(root, val_fraction: float = 0.1, seed: int = 0) -> tuple[Path, Path]:
    """``root/train.txt`` and ``root/val.txt`` of a ``folder`` dataset, written from ``images/`` when absent
    (every image needs ``labels/<stem>.png``; ``val_fraction`` of them, seeded, go to val.txt)."""
    root = Path(root)
    train, val = root / "train.txt", root / "val.txt"
    if train.is_file() and val.is_file():
        return train, val
    images = root / "images"
    if not images.is_dir():
        raise UserError(f"{images}: folder not found; a folder dataset holds images/, labels/ and classes.txt")
    stems = sorted(p.stem for p in images.iterdir() if p.suffix.lower() in FOLDER_IMAGE_EXTS)
    if not stems:
        raise UserError(f"{images}: holds no images ({', '.join(FOLDER_IMAGE_EXTS)})")
    if len(set(stems)) != len(stems):
        raise UserError(f"{images}: two images share a stem; rename them (labels are matched by stem)")
    for stem in stems:
        if not (root / "labels" / f"{stem}.png").is_file():
            image = next(p for p in images.iterdir() if p.stem == stem)
            raise UserError(f"{image}: image has no label {root / 'labels' / (stem + '.png')}; add the index PNG "
                            f"or move the image out of images/")
    if val.is_file():
        held = set(read_list(val, "ids"))
        train_ids = [s for s in stems if s not in held]
    else:
        n_val = max(1, round(len(stems) * val_fraction)) if len(stems) > 1 else 0
        picked = set(np.random.default_rng(seed).permutation(len(stems))[:n_val].tolist())
        val.write_text("".join(f"{s}\n" for i, s in enumerate(stems) if i in picked), encoding="utf-8")
        train_ids = [s for i, s in enumerate(stems) if i not in picked]
    train.write_text("".join(f"{s}\n" for s in train_ids), encoding="utf-8")
    return train, val


_FORMATS = {"voc": "ids", "synthetic": "ids", "city": "pairs", "ids": "ids", "pairs": "pairs"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m furnace.datasets.make_splits",
        description="Write labeled/unlabeled partition lists (1/N labeled, N in --ratios) of a training list. "
        "Labeled count = ceil(n/N); nested across N; deterministic given --seed.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--list", help="training list (VOC ids or Cityscapes TAB pairs)")
    source.add_argument("--folder", metavar="ROOT", help="your own dataset (images/, labels/, classes.txt): writes "
                        "ROOT/train.txt and val.txt when absent, and the partitions into ROOT/splits/")
    parser.add_argument("--out", help="folder for <prefix>_{labeled,unlabeled}_1-N.txt (with --list)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="--folder without val.txt: the share of images held out for validation (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="permutation seed (default 0)")
    parser.add_argument(
        "--format",
        choices=("voc", "city", "synthetic"),
        default=None,
        help="list format; default: detected from the first line",
    )
    parser.add_argument(
        "--ratios", type=int, nargs="+", default=list(DEFAULT_RATIOS), help="N values (default 16 8 4 2)"
    )
    parser.add_argument("--prefix", default="train_aug", help="file name prefix (default train_aug)")
    args = parser.parse_args(argv)

    def body():
        list_format = _FORMATS[args.format] if args.format else None
        list_path, out, prefix = args.list, args.out, args.prefix
        if args.folder:
            list_path, val = folder_lists(args.folder, args.val_fraction, args.seed)
            out, prefix, list_format = Path(args.folder) / "splits", "train", "ids"
            print(f"{len(read_list(list_path, 'ids'))} training images -> {list_path}, "
                  f"{len(read_list(val, 'ids'))} val images -> {val}")
        elif not out:
            raise UserError("--out is required with --list (the folder the partition lists go to)")
        written = write_splits(list_path, out, args.ratios, args.seed, prefix, list_format)
        for ratio, (labeled, unlabeled) in written.items():
            n_l, n_u = len(labeled.read_text().splitlines()), len(unlabeled.read_text().splitlines())
            print(f"1/{ratio}: {n_l} labeled -> {labeled}, {n_u} unlabeled -> {unlabeled}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
