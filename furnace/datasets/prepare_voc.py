"""Convert PASCAL VOC 2012 + SBD into the project's VOC layout (SPEC §2):
``python -m furnace.datasets.prepare_voc --voc VOCdevkit/VOC2012 --sbd benchmark_RELEASE --dst DATA/pascal_voc``.

Writes ``DST/{train_aug,val}/{image,label}/`` (images copied, index-PNG labels from VOC's palette
``SegmentationClass`` or else SBD's ``cls/<id>.mat``; 255 stays ignore), ``train_aug.txt`` = (SBD train ∪ SBD val ∪
VOC train) − VOC val (10,582 ids) and ``val.txt`` = VOC val (1,449). Partitions: the standard lists or make_splits.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from ..utils import UserError, run_cli
from ._util import DEFAULT_WORKERS, next_step_hint, progress_map, raise_conversion_problems, write_png
from .layouts import LAYOUTS, voc_colormap

NUM_CLASSES = 21


def read_palette_label(path) -> np.ndarray:
    """(H, W) uint8 class indices of a palette, grayscale or VOC-coloured RGB ``SegmentationClass`` PNG."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.array(img)
    except FileNotFoundError:
        raise UserError(f"{path}: label file not found") from None
    except OSError as err:
        raise UserError(f"{path}: label cannot be read ({err})") from None
    if mode in ("P", "L"):
        return array.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        cmap = voc_colormap(256).astype(np.int64)
        lookup = dict(zip(((cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]).tolist(), range(256)))
        rgb = array[..., :3].astype(np.int64)
        values, inverse = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], return_inverse=True)
        unknown = [v for v in values.tolist() if v not in lookup]
        if unknown:
            v = unknown[0]
            raise UserError(f"{path}: colour {(v >> 16, (v >> 8) & 255, v & 255)} is not in the VOC colormap")
        return np.array([lookup[v] for v in values.tolist()], np.uint8)[inverse].reshape(rgb.shape[:2])
    raise UserError(f"{path}: unexpected PNG mode {mode!r} for a VOC label")


def _require_scipy():
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError("reading SBD .mat files needs scipy, which is not installed: `pip install scipy` "
                        "(an optional dependency used only by prepare_voc)") from None
    return loadmat


def read_sbd_label(path) -> np.ndarray:
    """Class indices (H, W) uint8 of an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``)."""
    loadmat = _require_scipy()
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        seg = mat["GTcls"].Segmentation
    except FileNotFoundError:
        raise UserError(f"{path}: SBD label file not found") from None
    except Exception as err:  # scipy raises several types for corrupt files
        raise UserError(f"{path}: not a readable SBD GTcls .mat file ({type(err).__name__}: {err})") from None
    return np.asarray(seg).astype(np.uint8)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: id list not found; check --voc / --sbd")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _sbd_dir(sbd: Path) -> Path:
    for candidate in (sbd, sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise UserError(f"{sbd}: no SBD 'cls/' folder here or in dataset/; pass the SBD root (benchmark_RELEASE) as --sbd")


def _convert(job) -> str:
    """Copy one image and write its index label; returns a problem message or ''."""
    image_src, label_src, image_dst, label_dst = job
    try:
        if not Path(image_src).is_file():
            raise UserError(f"{image_src}: image file not found")
        label = read_sbd_label(label_src) if str(label_src).endswith(".mat") else read_palette_label(label_src)
        bad = np.setdiff1d(np.unique(label), np.r_[np.arange(NUM_CLASSES), 255])
        if bad.size:
            raise UserError(f"{label_src}: label values {bad.tolist()} are outside 0..20 and 255")
        Path(image_dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_src, image_dst)
        write_png(label_dst, label)
    except UserError as err:
        return str(err)
    return ""


def prepare_voc(voc, sbd, dst, workers: int = 0, progress: bool = True) -> dict:
    """Convert VOC (+ SBD when given) into ``dst``: ``{"train_aug": n, "val": n}``, or a UserError on failures."""
    voc, dst = Path(voc), Path(dst)
    layout = LAYOUTS["voc"]
    seg_sets = voc / "ImageSets" / "Segmentation"
    train_ids, voc_val = set(_read_ids(seg_sets / "train.txt")), _read_ids(seg_sets / "val.txt")
    sbd_dir = None
    if sbd:
        sbd_dir = _sbd_dir(Path(sbd))
        _require_scipy()  # before any work, not once per file
        for name in ("train.txt", "val.txt"):
            train_ids |= set(_read_ids(sbd_dir / name))
    train_aug = sorted(train_ids - set(voc_val))

    def job(image_id: str, split: str):
        image = voc / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file() and sbd_dir is not None and (sbd_dir / "img" / f"{image_id}.jpg").is_file():
            image = sbd_dir / "img" / f"{image_id}.jpg"
        label = voc / "SegmentationClass" / f"{image_id}.png"
        if not label.is_file() and split == "train" and sbd_dir is not None:
            label = sbd_dir / "cls" / f"{image_id}.mat"
        out = dst / layout.split_dirs[split]
        return str(image), str(label), str(out / "image" / f"{image_id}.jpg"), str(out / "label" / f"{image_id}.png")

    jobs = [job(i, "train") for i in train_aug] + [job(i, "val") for i in voc_val]
    results = progress_map(_convert, jobs, workers, desc="prepare_voc", progress=progress)
    raise_conversion_problems(results)  # before the lists: a failed run leaves those of an earlier one
    dst.mkdir(parents=True, exist_ok=True)
    (dst / layout.train_list).write_text("".join(f"{i}\n" for i in train_aug))
    (dst / layout.val_list).write_text("".join(f"{i}\n" for i in voc_val))
    return {"train_aug": len(train_aug), "val": len(voc_val)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.datasets.prepare_voc",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--voc", required=True, help="VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, ImageSets)")
    parser.add_argument("--sbd", default="", help="SBD root (benchmark_RELEASE or its dataset/); omit for VOC only")
    parser.add_argument("--dst", required=True, help="output folder, e.g. DATA/pascal_voc")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="processes (0 = none)")
    args = parser.parse_args(argv)

    def body():
        counts = prepare_voc(args.voc, args.sbd, args.dst, args.workers, progress=True)
        print(f"wrote {counts['train_aug']} train_aug and {counts['val']} val samples to {args.dst}")
        if not args.sbd:
            print("note: without --sbd, train_aug is VOC train only (the standard train_aug has 10,582 ids)")
        print(next_step_hint(Path(args.dst) / "train_aug.txt", Path(args.dst) / "subset_train_aug"))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
