"""Make labeled/unlabeled partition lists from a training list.

    python -m furnace.datasets.make_splits --list DATA/pascal_voc/train_aug.txt \\
        --out DATA/pascal_voc/subset_train_aug --seed 0 --ratios 16 8 4 2

writes ``<prefix>_labeled_1-N.txt`` and ``<prefix>_unlabeled_1-N.txt`` for each N. The 1/N partition
labels ``ceil(n / N)`` entries — the rule behind the community's standard splits (VOC 10,582 ->
662 / 1,323 / 2,646 / 5,291; Cityscapes 2,975 -> 186 / 372 / 744 / 1,488 for 1/16, 1/8, 1/4, 1/2).
The labeled entries are the first ``ceil(n / N)`` of one seeded permutation, so the partitions are
nested (1/16 ⊂ 1/8 ⊂ 1/4 ⊂ 1/2); the unlabeled list is the rest. Entries keep the training list's
order and format (bare ids or TAB-separated pairs).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from ..utils import UserError, run_cli
from .layouts import detect_list_format, read_list

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


_FORMATS = {"voc": "ids", "synthetic": "ids", "city": "pairs", "ids": "ids", "pairs": "pairs"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m furnace.datasets.make_splits",
        description="Write labeled/unlabeled partition lists (1/N labeled, N in --ratios) of a training list. "
        "Labeled count = ceil(n/N); nested across N; deterministic given --seed.",
    )
    parser.add_argument("--list", required=True, help="training list (VOC ids or Cityscapes TAB pairs)")
    parser.add_argument("--out", required=True, help="folder for <prefix>_{labeled,unlabeled}_1-N.txt")
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
        written = write_splits(args.list, args.out, args.ratios, args.seed, args.prefix, list_format)
        for ratio, (labeled, unlabeled) in written.items():
            n_l, n_u = len(labeled.read_text().splitlines()), len(unlabeled.read_text().splitlines())
            print(f"1/{ratio}: {n_l} labeled -> {labeled}, {n_u} unlabeled -> {unlabeled}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
