"""Make labeled/unlabeled partition lists from a training list (``--list LIST --out DIR``) or for your own
``images/``, ``labels/``, ``classes.txt`` (``--folder ROOT``: an image with a label is labeled, one without is
unlabeled; ``--ratios N`` hides labels instead).

    python -m furnace.datasets.make_splits --list DATA/pascal_voc/train_aug.txt --out DATA/pascal_voc/subset_train_aug
    python -m furnace.datasets.make_splits --folder DATA/custom     # val.txt, splits/{labeled,unlabeled}.txt

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
from .layouts import FOLDER_IMAGE_EXTS, folder_files
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
    written = {}
    for ratio, parts in make_splits(entries, ratios, seed).items():
        written[ratio] = (out_dir / f"{prefix}_labeled_1-{ratio}.txt", out_dir / f"{prefix}_unlabeled_1-{ratio}.txt")
        for path, part in zip(written[ratio], parts):
            write_list(path, part)
    return written


def write_list(path: Path, entries: list[str]) -> None:
    """One entry per line (UTF-8), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e}\n" for e in entries), encoding="utf-8")


def folder_stems(root) -> tuple[list[str], list[str]]:
    """``(labeled, unlabeled)`` stems of ``root/images`` (sorted): images with ``labels/<stem>.png`` and without;
    UserError when there are no images, or two share a stem."""
    images = Path(root) / "images"
    if not images.is_dir():
        raise UserError(f"{images}: folder not found; a folder dataset holds images/, labels/ and classes.txt")
    found = folder_files(images)
    if not found:
        raise UserError(f"{images}: holds no images ({', '.join(FOLDER_IMAGE_EXTS)}, in any case)")
    for names in found.values():
        if len(names) > 1:
            raise UserError(f"{images / names[0]}: {names[1]} has the same stem; rename one (labels are matched "
                            f"by stem)")
    label_dir = Path(root) / "labels"
    labels = folder_files(label_dir)  # every image extension: a JPEG label is named, not silently passed over
    for stem, names in labels.items():
        for name in (n for n in names if not n.lower().endswith(".png")):
            raise UserError(f"{label_dir / name}: labels are PNG index maps (a class index per pixel); save it "
                            f"as labels/{stem}.png, losslessly, or remove it")
    orphans = sorted(set(labels) - set(found))
    if orphans:
        lower = {s.lower(): s for s in found}
        near = f"; images/ has {lower[orphans[0].lower()]}" if orphans[0].lower() in lower else ""
        more = f" ({len(orphans) - 1} more label(s) without an image)" if len(orphans) > 1 else ""
        raise UserError(f"{label_dir / labels[orphans[0]][0]}: no image of that stem in images/ (matched by stem, "
                        f"case included{near}){more}; rename the label or the image, or remove the label")
    return [s for s in sorted(found) if s in labels], [s for s in sorted(found) if s not in labels]


def pick_val(labeled: list[str], val_path: Path, val_fraction: float, seed: int) -> tuple[list[str], bool]:
    """``(val stems, whether to write them)``: those of an existing ``val_path``, all labeled, else a seeded
    ``val_fraction`` of ``labeled`` (at least one); UserError naming the list or saying what is missing."""
    if val_path.is_file():
        val, have = read_list(val_path, "stems"), set(labeled)
        stray = next((s for s in val if s not in have), None)
        if stray is not None:
            raise UserError(f"{val_path}: {stray!r} is not a labeled image (no images/{stray}.* with a "
                            f"labels/{stray}.png); val images need labels: fix the entry or delete {val_path.name}")
        return val, False
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction} must lie between 0 and 1")
    if len(labeled) < 2:
        raise UserError(f"{val_path.parent / 'labels'}: {len(labeled)} image(s) of images/ have a label "
                        f"labels/<stem>.png (matched by stem: images/x.jpg, labels/x.png); at least 2 are needed "
                        f"(val and training): label more images")
    n_val = min(max(1, round(len(labeled) * val_fraction)), len(labeled) - 1)
    picked = set(np.random.default_rng(seed).permutation(len(labeled))[:n_val].tolist())
    return [s for i, s in enumerate(labeled) if i in picked], True


def folder_splits(root, ratios=None, val_fraction: float = 0.1, seed: int = 0) -> list[str]:
    """Write a folder dataset's lists; returns the report lines (counts and files). Without ``ratios`` the natural
    partition: ``val.txt`` (when absent) from the labeled images, ``splits/labeled.txt`` the other labeled
    images, ``splits/unlabeled.txt`` every image without a label. With ``ratios`` the simulated 1/N partitions
    of ``train.txt`` (the labeled images but val, when absent) in ``splits/train_{labeled,unlabeled}_1-N.txt``,
    the images without a label added to each unlabeled list. Everything is checked before anything is written."""
    root = Path(root)
    labeled, unlabeled = folder_stems(root)
    val_path, train_path = root / "val.txt", root / "train.txt"
    val, write_val = pick_val(labeled, val_path, val_fraction, seed)
    train = [s for s in labeled if s not in set(val)]
    if not train:
        raise UserError(f"{val_path}: holds every labeled image; leave some labeled images out of val")
    lists, report = {}, [f"{root}: {len(labeled)} images with a label (labels/<stem>.png), {len(unlabeled)} without"]
    others = sorted(p.name for p in (root / "images").iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() not in FOLDER_IMAGE_EXTS)
    if others:
        report.append(f"note: {len(others)} file(s) of images/ left out, not {'/'.join(FOLDER_IMAGE_EXTS)}: "
                      f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''} (convert photos to JPEG or PNG)")
    if write_val:
        lists[val_path] = val
    report.append(f"val: {len(val)} labeled images -> {val_path}" + ("" if write_val else " (kept)"))
    if not ratios:
        if not unlabeled:
            raise UserError(f"{root / 'images'}: every image has a label, so none is unlabeled; add the unlabeled "
                            f"images to images/, or simulate a partition with `--ratios 8` (then train with "
                            f"labeled_ratio=8)")
        lists[root / "splits/labeled.txt"], lists[root / "splits/unlabeled.txt"] = train, unlabeled
        report.append(f"natural partition: {len(train)} labeled -> {root / 'splits/labeled.txt'}, "
                      f"{len(unlabeled)} unlabeled -> {root / 'splits/unlabeled.txt'}")
    else:
        if train_path.is_file():
            train = read_list(train_path, "stems")
        else:
            lists[train_path] = train
        extra = [s for s in unlabeled if s not in set(train)]
        for ratio, (part_l, part_u) in make_splits(train, ratios, seed).items():
            paths = root / f"splits/train_labeled_1-{ratio}.txt", root / f"splits/train_unlabeled_1-{ratio}.txt"
            lists[paths[0]], lists[paths[1]] = part_l, part_u + extra
            report.append(f"1/{ratio}: {len(part_l)} labeled -> {paths[0]}, {len(part_u) + len(extra)} unlabeled "
                          f"-> {paths[1]}" + (f" ({len(extra)} without a label)" if extra else ""))
    for path, entries in lists.items():
        write_list(path, entries)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.datasets.make_splits",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--list", help="training list (VOC ids or Cityscapes TAB pairs)")
    source.add_argument("--folder", metavar="ROOT", help="your own dataset: ROOT/val.txt, ROOT/splits/")
    parser.add_argument("--out", help="folder for <prefix>_{labeled,unlabeled}_1-N.txt (with --list)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="--folder: share of labeled images for val.txt")
    parser.add_argument("--seed", type=int, default=0, help="permutation seed (default 0)")
    parser.add_argument("--format", choices=("voc", "city", "synthetic"), help="list format (default: detected)")
    parser.add_argument("--ratios", type=int, nargs="+", default=None,
                        help="N values (default 16 8 4 2; --folder: none, the natural partition)")
    parser.add_argument("--prefix", default="train_aug", help="file name prefix (default train_aug)")
    args = parser.parse_args(argv)

    def body():
        if args.folder:
            print("\n".join(folder_splits(args.folder, args.ratios, args.val_fraction, args.seed)))
            return
        if not args.out:
            raise UserError("--out is required with --list (the folder the partition lists go to)")
        list_format = ("pairs" if args.format == "city" else "ids") if args.format else None
        written = write_splits(args.list, args.out, args.ratios or DEFAULT_RATIOS, args.seed, args.prefix, list_format)
        for ratio, (labeled, unlabeled) in written.items():
            n_l, n_u = len(labeled.read_text().splitlines()), len(unlabeled.read_text().splitlines())
            print(f"1/{ratio}: {n_l} labeled -> {labeled}, {n_u} unlabeled -> {unlabeled}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
