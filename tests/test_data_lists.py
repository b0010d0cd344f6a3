"""Layouts, split lists (both formats), the dataset class and its file checks, partition lists."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from easydict import EasyDict
from PIL import Image

from furnace.datasets import LAYOUTS, SegDataset, read_list, split_paths
from furnace.datasets.lists import detect_list_format
from furnace.datasets.make_splits import labeled_count, make_splits, write_splits
from furnace.utils import UserError


def write_jpg(path, image_rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR))


def voc_fixture(root: Path, train_ids=("a", "b"), val_ids=("v",), size=(20, 30)):
    """VOC layout with solid red images and labels holding 0, 5, 255."""
    h, w = size
    for split, ids in (("train_aug", train_ids), ("val", val_ids)):
        for i in ids:
            write_jpg(root / split / "image" / f"{i}.jpg", np.full((h, w, 3), (255, 0, 0), np.uint8))
            label = np.zeros((h, w), np.uint8)
            label[:, w // 2 :] = 5
            label[0] = 255
            write_png(root / split / "label" / f"{i}.png", label)
    (root / "train_aug.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (root / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    return root


# ----------------------------------------------------------------------------- layouts


def test_layouts_classes_palettes_and_unknown_name():
    voc, city, syn = LAYOUTS["voc"], LAYOUTS["city"], LAYOUTS["synthetic"]
    assert (voc.num_classes, city.num_classes, syn.num_classes) == (21, 19, 7)
    assert (voc.dir_name, city.dir_name, syn.dir_name) == ("pascal_voc", "city", "synthetic")
    assert voc.palette.shape == (21, 3) and voc.palette.dtype == np.uint8
    # VOC bit-interleaved colormap: aeroplane, bicycle, person; 255 is the boundary colour.
    assert voc.palette[1].tolist() == [128, 0, 0] and voc.palette[2].tolist() == [0, 128, 0]
    assert voc.palette[15].tolist() == [192, 128, 128]
    assert voc.colorize(np.array([[255]], np.uint8))[0, 0].tolist() == [224, 224, 192]
    assert city.palette[0].tolist() == [128, 64, 128] and city.palette[18].tolist() == [119, 11, 32]
    assert city.class_names[0] == "road" and city.class_names[18] == "bicycle"
    assert len({tuple(c) for c in syn.palette}) == 7
    assert voc.ignore_index == city.ignore_index == 255
    from furnace.config import prepare, voc_config

    with pytest.raises(UserError, match="dataset='coco' is not one of voc, city, synthetic, folder"):
        prepare(voc_config(), ["dataset=coco"])


def test_split_paths_standard_and_overrides(tmp_path):
    cfg = EasyDict(
        dataset="voc", data_root=str(tmp_path), labeled_ratio=8, labeled_list="", unlabeled_list="", val_list=""
    )
    lab, unl, val = split_paths(cfg)
    assert lab == tmp_path / "pascal_voc/subset_train_aug/train_aug_labeled_1-8.txt"
    assert unl == tmp_path / "pascal_voc/subset_train_aug/train_aug_unlabeled_1-8.txt"
    assert val == tmp_path / "pascal_voc/val.txt"
    cfg.update(dataset="city", labeled_ratio=16)
    lab, unl, val = split_paths(cfg)
    assert lab == tmp_path / "city/config_new/subset_train/train_aug_labeled_1-16.txt"
    assert val == tmp_path / "city/config_new/val.txt"
    cfg.update(labeled_list="my/lab.txt", val_list=str(tmp_path / "elsewhere.txt"))
    lab, _, val = split_paths(cfg)
    assert lab == tmp_path / "city/my/lab.txt" and val == tmp_path / "elsewhere.txt"
    cfg.update(dataset="synthetic", labeled_ratio=1, labeled_list="", val_list="")
    lab, unl, _ = split_paths(cfg)
    assert lab == unl == tmp_path / "synthetic/train_aug.txt"


# ----------------------------------------------------------------------------- list reading


def test_read_lists_in_both_formats(tmp_path):
    voc = tmp_path / "voc.txt"
    voc.write_bytes(b"\xef\xbb\xbf2007_000032\r\n2007_000039\n\n2008_000001\n")  # BOM, CRLF, blank line
    assert read_list(voc, "ids") == ["2007_000032", "2007_000039", "2008_000001"]
    city = tmp_path / "city.txt"
    city.write_text("/images/train/a_000000_000019.png\t/segmentation/train/a_000000_000019_gtFine.png\n")
    assert read_list(city, "pairs") == [
        "/images/train/a_000000_000019.png\t/segmentation/train/a_000000_000019_gtFine.png"
    ]
    assert detect_list_format(voc) == "ids" and detect_list_format(city) == "pairs"


@pytest.mark.parametrize(
    "fmt, text, match",
    [
        ("ids", "a\n/images/train/x.png\t/segmentation/train/x_gtFine.png\n", r"voc.txt:2: .*Cityscapes"),
        ("ids", "JPEGImages/x.jpg\n", r"voc.txt:1: .*bare id"),
        (
            "pairs",
            "/images/train/x.png\t/segmentation/train/x_gtFine.png\n2007_000032\n",
            r"voc.txt:2: .*TAB.*VOC-style",
        ),
        ("pairs", "images/train/x.png\tsegmentation/train/x_gtFine.png\n", r"voc.txt:1: .*start with '/'"),
        ("pairs", "/images/train/x.png /segmentation/train/x_gtFine.png\n", r"voc.txt:1: .*TAB"),
        ("ids", "\n\n", r"voc.txt: split list is empty"),
    ],
)
def test_wrong_list_format_names_file_and_line(tmp_path, fmt, text, match):
    path = tmp_path / "voc.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        read_list(path, fmt)


def test_missing_list_is_named(tmp_path):
    with pytest.raises(UserError, match="nope.txt: split list not found"):
        read_list(tmp_path / "nope.txt", "ids")


# ----------------------------------------------------------------------------- dataset


def test_voc_dataset_resolves_train_aug_and_val_and_reads_rgb(tmp_path):
    root = voc_fixture(tmp_path / "pascal_voc")
    layout = LAYOUTS["voc"]
    train = SegDataset(layout, root, root / "train_aug.txt")
    val = SegDataset(layout, root, root / "val.txt")
    assert len(train) == 2 and len(val) == 1 and train.split == "train" and val.split == "val"
    assert train.files(0)[0] == root / "train_aug/image/a.jpg" and val.files(0)[1] == root / "val/label/v.png"
    sample = train[1]
    assert sample["name"] == "b" and sample["image"].shape == (20, 30, 3) and sample["image"].dtype == np.uint8
    red = sample["image"][10, 10]
    assert red[0] > 200 and red[2] < 60  # RGB order, not BGR
    assert sample["label"].dtype == np.uint8 and set(np.unique(sample["label"])) == {0, 5, 255}
    unlabeled = SegDataset(layout, root, root / "train_aug.txt", with_label=False)
    assert set(unlabeled[0]) == {"image", "name"}


def test_city_dataset_reads_pair_lists(tmp_path):
    root = tmp_path / "city"
    write_png(root / "images/train/x_000000_000019.png", np.zeros((8, 16, 3), np.uint8))
    write_png(root / "segmentation/train/x_000000_000019_gtFine.png", np.full((8, 16), 18, np.uint8))
    (root / "config_new").mkdir()
    (root / "config_new/train.txt").write_text(
        "/images/train/x_000000_000019.png\t/segmentation/train/x_000000_000019_gtFine.png\n"
    )
    ds = SegDataset(LAYOUTS["city"], root, root / "config_new/train.txt")
    sample = ds[0]
    assert sample["name"] == "x_000000_000019" and sample["label"].max() == 18 and sample["image"].shape == (8, 16, 3)


def _corrupt(root, kind):
    label = root / "train_aug/label/a.png"
    image = root / "train_aug/image/a.jpg"
    if kind == "palette":  # read as its indices, checked like any label's
        img = Image.fromarray(np.full((20, 30), 21, np.uint8), mode="P")
        img.putpalette(LAYOUTS["voc"].palette.ravel().tolist())
        img.save(label)
        return label, r"label values \{21\} are outside the 21 classes"
    if kind == "rgb":
        write_png(label, np.zeros((20, 30, 3), np.uint8))
        return label, "RGB PNG"
    if kind == "missing":
        label.unlink()
        return label, "label file not found"
    if kind == "truncated":
        image.write_bytes(image.read_bytes()[:200])
        return image, "truncated"
    if kind == "size":
        write_png(label, np.zeros((21, 30), np.uint8))
        return image, "30x20 but its label .*30x21"
    if kind == "value":
        write_png(label, np.full((20, 30), 21, np.uint8))
        return label, r"label values \{21\} are outside the 21 classes"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["palette", "rgb", "missing", "truncated", "size", "value"])
def test_bad_sample_raises_user_error_naming_file(tmp_path, kind):
    root = voc_fixture(tmp_path / "pascal_voc")
    path, match = _corrupt(root, kind)
    ds = SegDataset(LAYOUTS["voc"], root, root / "train_aug.txt")
    with pytest.raises(UserError, match=match) as err:
        ds[0]
    assert str(path) in str(err.value)
    ds[1]  # the other sample is fine


def test_a_palette_label_is_read_as_its_indices(tmp_path):
    """SPEC §2: VOC's SegmentationClass PNGs are palette PNGs; their values are the indices, not the colours."""
    root = voc_fixture(tmp_path / "pascal_voc")
    indices = np.zeros((20, 30), np.uint8)
    indices[:, 10:] = 15
    indices[0] = 255
    img = Image.fromarray(indices, mode="P")
    img.putpalette(LAYOUTS["voc"].palette.ravel().tolist() + [224, 224, 192] * 235)
    img.save(root / "train_aug/label/a.png")
    assert np.array_equal(SegDataset(LAYOUTS["voc"], root, root / "train_aug.txt")[0]["label"], indices)


# ----------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("n, counts", [(10582, (662, 1323, 2646, 5291)), (2975, (186, 372, 744, 1488))])
def test_partition_sizes_match_standard_splits(n, counts):
    assert tuple(labeled_count(n, r) for r in (16, 8, 4, 2)) == counts
    entries = [f"id{i:05d}" for i in range(n)]
    splits = make_splits(entries, (16, 8, 4, 2), seed=3)
    for ratio, count in zip((16, 8, 4, 2), counts):
        labeled, unlabeled = splits[ratio]
        assert len(labeled) == count and len(unlabeled) == n - count
        assert not set(labeled) & set(unlabeled) and set(labeled) | set(unlabeled) == set(entries)
    assert set(splits[16][0]) <= set(splits[8][0]) <= set(splits[4][0]) <= set(splits[2][0])
    again = make_splits(entries, (16, 8, 4, 2), seed=3)
    assert again == splits
    assert make_splits(entries, (8,), seed=4)[8][0] != splits[8][0]


def test_write_splits_keeps_city_pair_format(tmp_path):
    lines = [f"/images/train/c_{i:06d}_000019.png\t/segmentation/train/c_{i:06d}_000019_gtFine.png" for i in range(37)]
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines) + "\n")
    written = write_splits(train, tmp_path / "subset_train", ratios=(8,), seed=0)
    lab, unl = written[8]
    assert lab.name == "train_aug_labeled_1-8.txt" and unl.name == "train_aug_unlabeled_1-8.txt"
    labeled, unlabeled = read_list(lab, "pairs"), read_list(unl, "pairs")
    assert len(labeled) == 5 and sorted(labeled + unlabeled) == sorted(lines)
    assert labeled == [x for x in lines if x in labeled]  # training-list order kept
