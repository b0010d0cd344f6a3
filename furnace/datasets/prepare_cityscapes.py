"""Convert the official Cityscapes layout into the project's flat layout with trainIds (SPEC §2):
``python -m furnace.datasets.prepare_cityscapes --src CITYSCAPES_ROOT --dst DATA/city``.

``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` -> ``images/<split>/<x>.png`` (copied or ``--link``ed),
``gtFine/.../<x>_gtFine_labelIds.png`` -> ``segmentation/<split>/<x>_gtFine.png`` (trainIds, void 255), and
``config_new/<split>.txt`` with ``/images/...<TAB>/segmentation/...`` lines.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from ..utils import IGNORE_INDEX, UserError, run_cli
from ._util import DEFAULT_WORKERS, next_step_hint, progress_map, raise_conversion_problems, write_png
from .layouts import CITY_LABELID_TO_TRAINID

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"

LABELID_TO_TRAINID_LUT = np.full(256, IGNORE_INDEX, np.uint8)  # official labelId -> trainId (0..18, void 255)
LABELID_TO_TRAINID_LUT[list(CITY_LABELID_TO_TRAINID)] = list(CITY_LABELID_TO_TRAINID.values())


def _convert(job) -> str:
    image_src, label_src, image_dst, label_dst, link = job
    try:
        if not os.path.isfile(label_src):
            raise UserError(f"{label_src}: labelIds file not found for image {image_src}")
        label = cv2.imdecode(np.fromfile(label_src, np.uint8), cv2.IMREAD_UNCHANGED)
        if label is None or label.ndim != 2 or label.dtype != np.uint8:
            raise UserError(f"{label_src}: not a single-channel 8-bit labelIds PNG")
        write_png(label_dst, LABELID_TO_TRAINID_LUT[label])
        Path(image_dst).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(image_dst):
            os.unlink(image_dst)
        if link:
            try:
                os.link(image_src, image_dst)
                return ""
            except OSError:
                pass  # another file system: copy instead
        shutil.copyfile(image_src, image_dst)
    except UserError as err:
        return str(err)
    return ""


def prepare_cityscapes(src, dst, splits=("train", "val"), link: bool = False, workers: int = 0,
                       progress: bool = True) -> dict:
    """Convert ``splits`` of ``src`` into ``dst``: ``{split: n}``, or a UserError listing the failed samples."""
    src, dst = Path(src), Path(dst)
    found = {split: sorted((src / "leftImg8bit" / split).glob(f"*/*{_IMAGE_SUFFIX}")) for split in splits}
    for split, images in found.items():  # every split's images found before any is converted
        if not images:
            raise UserError(f"{src / 'leftImg8bit' / split}: no */*{_IMAGE_SUFFIX} images; check --src or choose "
                            f"--splits")
        if not (src / "gtFine" / split).is_dir():
            raise UserError(f"{src / 'gtFine' / split}: folder not found; unpack gtFine_trainvaltest.zip into --src "
                            f"beside leftImg8bit/")
    counts = {}
    for split, images in found.items():
        jobs, lines = [], []
        for image in images:
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            label = src / "gtFine" / split / image.parent.name / f"{stem}{_LABEL_SUFFIX}"
            rel_image, rel_label = f"images/{split}/{stem}.png", f"segmentation/{split}/{stem}_gtFine.png"
            jobs.append((str(image), str(label), str(dst / rel_image), str(dst / rel_label), link))
            lines.append(f"/{rel_image}\t/{rel_label}\n")
        results = progress_map(_convert, jobs, workers, desc=f"cityscapes {split}", progress=progress)
        raise_conversion_problems(results, f"{split} samples")
        (dst / "config_new").mkdir(parents=True, exist_ok=True)
        (dst / "config_new" / f"{split}.txt").write_text("".join(lines))
        counts[split] = len(lines)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.datasets.prepare_cityscapes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="Cityscapes root holding leftImg8bit/ and gtFine/")
    parser.add_argument("--dst", required=True, help="output folder, e.g. DATA/city")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to convert (default train val)")
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying (same file system)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="processes (0 = none)")
    args = parser.parse_args(argv)

    def body():
        lists = Path(args.dst) / "config_new"
        for split, n in prepare_cityscapes(args.src, args.dst, args.splits, args.link, args.workers).items():
            print(f"{split}: {n} samples -> {lists / (split + '.txt')}")
        print(next_step_hint(lists / "train.txt", lists / "subset_train"))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
