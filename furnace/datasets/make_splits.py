"""Make labeled/unlabeled partition lists from a training list (``--list LIST --out DIR``) or for your own
``images/``, ``labels/``, ``classes.txt`` (``--folder ROOT``: also ``train.txt`` / ``val.txt`` when absent).

    python -m furnace.datasets.make_splits --list DATA/pascal_voc/train_aug.txt --out DATA/pascal_voc/subset_train_aug

The 1/N partition labels the first ``ceil(n / N)`` entries of one seeded permutation, the rule behind the standard
splits (VOC 10,582 -> 662 / 1,323 / 2,646 / 5,291 for 1/16 .. 1/2), so partitions are nested; the rest is
unlabeled; entries keep the list's order and format.
"""

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
    """``{ratio: (labeled, unlabeled)}`` of unique ``entries``, both in input order, labeled sets nested."""
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
        splits[int(ratio)] = (labeled, [e for e, r in zip(entries, rank) if r >= cut])
    return splits


def write_splits(list_path, out_dir, ratios=DEFAULT_RATIOS, seed: int = 0, prefix: str = "train_aug",
                 list_format: str | None = None) -> dict[int, tuple[Path, Path]]:
    """Write the partition lists of ``list_path`` into ``out_dir``: ``{ratio: (labeled_path, unlabeled_path)}``."""
    entries = read_list(list_path, list_format or detect_list_format(list_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for ratio, parts in make_splits(entries, ratios, seed).items():
        written[ratio] = (out_dir / f"{prefix}_labeled_1-{ratio}.txt", out_dir / f"{prefix}_unlabeled_1-{ratio}.txt")
        for path, part in zip(written[ratio], parts):
            path.write_text("".join(f"{e}\n" for e in part), encoding="utf-8")
    return written


def folder_lists(root, val_fraction: float = 0.1, seed: int = 0) -> tuple[Path, Path]:
    """``root/train.txt``, ``root/val.txt`` (a seeded ``val_fraction`` of ``images/``), written when absent."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.datasets.make_splits",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--list", help="training list (VOC ids or Cityscapes TAB pairs)")
    source.add_argument("--folder", metavar="ROOT", help="your own dataset: ROOT/train.txt, val.txt, splits/")
    parser.add_argument("--out", help="folder for <prefix>_{labeled,unlabeled}_1-N.txt (with --list)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="--folder: share of images for val.txt")
    parser.add_argument("--seed", type=int, default=0, help="permutation seed (default 0)")
    parser.add_argument("--format", choices=("voc", "city", "synthetic"), help="list format (default: detected)")
    parser.add_argument("--ratios", type=int, nargs="+", default=list(DEFAULT_RATIOS), help="N values (16 8 4 2)")
    parser.add_argument("--prefix", default="train_aug", help="file name prefix (default train_aug)")
    args = parser.parse_args(argv)

    def body():
        list_format = ("pairs" if args.format == "city" else "ids") if args.format else None
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
