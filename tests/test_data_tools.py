"""Dataset tools: check, make_synthetic, prepare_voc, prepare_cityscapes, make_splits CLI, bench_data."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from furnace.datasets import LAYOUTS, SegDataset, read_list
from furnace.datasets import check as check_tool
from furnace.datasets import make_splits as make_splits_tool
from furnace.datasets import make_synthetic as synthetic_tool
from furnace.datasets import prepare_cityscapes as city_tool
from furnace.datasets import prepare_voc as voc_tool
from furnace.datasets.layouts import CITY_LABELID_TO_TRAINID, voc_colormap
from furnace.utils import UserError

CITY_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes_sample"


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def write_palette_png(path, indices):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette(voc_colormap(256).ravel().tolist())
    img.save(path)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return synthetic_tool.generate(
        tmp_path_factory.mktemp("syn") / "synthetic", seed=2, num_train=16, num_val=4, size=32, ratios=(4, 2)
    )


# ----------------------------------------------------------------------------- check


def test_check_passes_on_a_good_dataset(synthetic_root, capsys):
    assert check_tool.main(["--dataset", "synthetic", "--root", str(synthetic_root), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:") and "train_aug.txt (16)" in out and "classes seen" in out
    # DATA/ itself is accepted as --root too
    assert check_tool.main(["--dataset", "synthetic", "--root", str(synthetic_root.parent), "--ratio", "4"]) == 0


def test_check_names_every_bad_file(synthetic_root, tmp_path, capsys):
    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root)
    img, lab = root / "train_aug/image", root / "train_aug/label"
    (img / "train_00001.jpg").write_bytes(b"not a jpeg at all")
    (lab / "train_00002.png").unlink()
    write_png(lab / "train_00003.png", np.zeros((33, 32), np.uint8))
    write_png(lab / "train_00004.png", np.full((32, 32), 9, np.uint8))
    write_png(lab / "train_00005.png", np.zeros((32, 32, 3), np.uint8))
    write_palette_png(lab / "train_00006.png", np.full((32, 32), 8))  # palette indices are the values
    with open(root / "val.txt", "a") as f:
        f.write("val_00099\n")
    (root / "subset_train_aug/train_aug_unlabeled_1-4.txt").write_text("train_00000\tx\n")
    assert check_tool.main(["--dataset", "synthetic", "--root", str(root), "--workers", "0"]) == 1
    out = capsys.readouterr().out
    expected = [
        (img / "train_00001.jpg", "cannot be decoded"),
        (lab / "train_00002.png", "label file not found"),
        (lab / "train_00003.png", "32x33"),
        (lab / "train_00004.png", "label values {9}"),
        (lab / "train_00005.png", "RGB PNG"),
        (lab / "train_00006.png", "label values {8}"),
        (root / "val/image/val_00099.jpg", "image file not found"),
        (root / "subset_train_aug/train_aug_unlabeled_1-4.txt", ":1:"),
    ]
    lines = out.splitlines()
    for path, what in expected:
        assert any(line.startswith(str(path)) and what in line for line in lines), (path, what, out)


def test_check_reports_overlapping_partition(synthetic_root, tmp_path, capsys):
    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root)
    labeled = (root / "subset_train_aug/train_aug_labeled_1-2.txt").read_text()
    with open(root / "subset_train_aug/train_aug_unlabeled_1-2.txt", "a") as f:
        f.write(labeled.splitlines()[0] + "\n")
    assert check_tool.main(["--dataset", "synthetic", "--root", str(root), "--ratio", "2", "--fast"]) == 1
    assert "must be disjoint" in capsys.readouterr().out


# ----------------------------------------------------------------------------- make_synthetic


def test_make_synthetic_is_deterministic_and_valid(synthetic_root, tmp_path):
    again = synthetic_tool.generate(tmp_path / "a", seed=2, num_train=16, num_val=4, size=32, ratios=(4, 2))
    files = sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 2 * 20 + 2 + 4
    for rel in files:
        assert (synthetic_root / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = synthetic_tool.generate(tmp_path / "b", seed=3, num_train=16, num_val=4, size=32, ratios=())
    assert (other / "train_aug/image/train_00000.jpg").read_bytes() != (
        again / "train_aug/image/train_00000.jpg"
    ).read_bytes()
    ds = SegDataset(LAYOUTS["synthetic"], synthetic_root, synthetic_root / "train_aug.txt")
    values = set()
    for i in range(len(ds)):
        values |= set(np.unique(ds[i]["label"]).tolist())
    assert values <= set(range(7)) and 0 in values and len(values) >= 4


def test_synthetic_classes_are_texture_and_polarity():
    """A *_dark class is a thin dark pattern on a lighter base, a *_light class the reverse: inside an object
    the minority tone (the pattern) is the darker, resp. the lighter one. (Grid lines cover up to half of
    an object, so grids are left out of this pixel count.)"""
    layout = LAYOUTS["synthetic"]
    grids = {layout.class_names.index("grid_dark"), layout.class_names.index("grid_light")}
    seen = set()
    for index in range(40):
        image, label = synthetic_tool.render_sample(synthetic_tool._sample_rng(0, "train", index), (64, 64))
        gray = image.astype(np.float32).mean(axis=2)
        for cls in set(np.unique(label).tolist()) - {0, *grids}:
            region = cv2.erode((label == cls).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if region.sum() < 150:
                continue  # mostly occluded
            values = gray[region]
            low, high = np.percentile(values, [5, 95])
            dark_share = (values < (low + high) / 2).mean()  # two tones: split halfway between them
            pattern_is_darker = dark_share < 0.5  # the pattern is the minority tone
            name = layout.class_names[cls]
            assert pattern_is_darker == name.endswith("_dark"), (index, name)
            seen.add(name)
    assert seen == {"stripes_dark", "stripes_light", "dots_dark", "dots_light"}


def test_synthetic_textures_are_horizontal_or_vertical():
    """With TEXTURE_ANGLES = 2 (the default) a stripe texture varies along exactly one image axis, and both
    orientations occur; 0 restores any angle, under which stripes vary along both axes."""
    canvas = synthetic_tool._Canvas(32, 32)
    rng = np.random.default_rng(0)
    orientations = set()
    for _ in range(20):
        t = canvas.texture(rng, 0, light=False)
        rows_equal, cols_equal = np.all(t == t[:1]), np.all(t == t[:, :1])
        assert rows_equal != cols_equal
        orientations.add(bool(rows_equal))
    assert orientations == {True, False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic_tool, "TEXTURE_ANGLES", 0)
        t = canvas.texture(np.random.default_rng(1), 0, light=False)
        assert not np.all(t == t[:1]) and not np.all(t == t[:, :1])


def test_make_synthetic_cli(tmp_path, capsys):
    assert (
        synthetic_tool.main(
            ["--root", str(tmp_path / "s"), "--num-train", "8", "--num-val", "2", "--size", "40", "24", "--ratios", "2"]
        )
        == 0
    )
    assert cv2.imread(str(tmp_path / "s/val/image/val_00001.jpg")).shape == (24, 40, 3)
    assert len(read_list(tmp_path / "s/subset_train_aug/train_aug_labeled_1-2.txt", "ids")) == 4


@pytest.mark.parametrize("tool", [check_tool, make_splits_tool, synthetic_tool, city_tool, voc_tool])
def test_tools_have_help(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0 and "usage: python -m furnace." in capsys.readouterr().out


def test_make_splits_cli(tmp_path, capsys):
    train = tmp_path / "train_aug.txt"
    train.write_text("".join(f"id{i}\n" for i in range(33)))
    assert make_splits_tool.main(["--list", str(train), "--out", str(tmp_path / "sub"), "--ratios", "8", "2"]) == 0
    assert "1/8: 5 labeled" in capsys.readouterr().out
    assert len(read_list(tmp_path / "sub/train_aug_unlabeled_1-2.txt", "ids")) == 16
    assert make_splits_tool.main(["--list", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 2


# ----------------------------------------------------------------------------- prepare_voc


def _fake_voc(tmp_path, with_sbd):
    voc = tmp_path / "VOCdevkit/VOC2012"
    sets = voc / "ImageSets/Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("t1\n")
    (sets / "val.txt").write_text("v1\nv2\n")
    labels = {}
    for i, name in enumerate(["t1", "v1", "v2", "s1"]):
        write_png(voc / "JPEGImages" / f"{name}.jpg", np.full((12, 16, 3), 40 * i, np.uint8))
    for i, name in enumerate(["t1", "v1", "v2"]):
        label = np.zeros((12, 16), np.uint8)
        label[2:6, 3:9] = 15 - i
        label[6, :] = 255  # object boundary
        label[8:, 10:] = 1
        write_palette_png(voc / "SegmentationClass" / f"{name}.png", label)
        labels[name] = label
    sbd = tmp_path / "benchmark_RELEASE"
    if with_sbd:
        from scipy.io import savemat

        dataset = sbd / "dataset"
        (dataset / "cls").mkdir(parents=True)
        (dataset / "train.txt").write_text("s1\nv1\n")
        (dataset / "val.txt").write_text("s2\n")
        write_png(dataset / "img/s2.jpg", np.full((10, 14, 3), 90, np.uint8))  # only in SBD
        for name, shape in (("s1", (12, 16)), ("s2", (10, 14)), ("v1", (12, 16))):
            seg = np.zeros(shape, np.uint8)
            seg[1:4, 1:5] = 20
            seg[5:, 5:] = 7
            savemat(dataset / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
            labels["sbd_" + name] = seg
    return voc, sbd, labels


def test_prepare_voc_with_sbd(tmp_path):
    pytest.importorskip("scipy")
    voc, sbd, labels = _fake_voc(tmp_path, with_sbd=True)
    dst = tmp_path / "pascal_voc"
    assert voc_tool.prepare_voc(voc, sbd, dst, workers=0, progress=False) == {"train_aug": 3, "val": 2}
    assert read_list(dst / "train_aug.txt", "ids") == ["s1", "s2", "t1"]  # (SBD train+val + VOC train) - VOC val
    assert read_list(dst / "val.txt", "ids") == ["v1", "v2"]
    read = lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert np.array_equal(read(dst / "train_aug/label/t1.png"), labels["t1"])  # palette indices, 255 kept
    assert np.array_equal(read(dst / "train_aug/label/s1.png"), labels["sbd_s1"])  # from the .mat
    assert np.array_equal(read(dst / "val/label/v2.png"), labels["v2"])
    assert (dst / "train_aug/image/s2.jpg").read_bytes() == (sbd / "dataset/img/s2.jpg").read_bytes()
    assert (dst / "val/image/v1.jpg").read_bytes() == (voc / "JPEGImages/v1.jpg").read_bytes()
    assert check_tool.main(["--dataset", "voc", "--root", str(dst), "--workers", "0"]) == 0


def test_prepare_voc_without_sbd_and_rgb_labels(tmp_path, capsys):
    voc, _, labels = _fake_voc(tmp_path, with_sbd=False)
    dst = tmp_path / "pascal_voc"
    assert voc_tool.main(["--voc", str(voc), "--dst", str(dst), "--workers", "0"]) == 0
    assert read_list(dst / "train_aug.txt", "ids") == ["t1"]
    # A colour (RGB) rendering of a VOC label maps back through the colormap.
    rgb_path = tmp_path / "rgb.png"
    Image.fromarray(voc_colormap(256)[labels["v1"]]).save(rgb_path)
    assert np.array_equal(voc_tool.read_palette_label(rgb_path), labels["v1"])
    # A missing VOC label is reported with its file, and the lists of the earlier run stay.
    lists = {p: p.read_bytes() for p in (dst / "train_aug.txt", dst / "val.txt")}
    (voc / "SegmentationClass/v2.png").unlink()
    (voc / "ImageSets/Segmentation/train.txt").write_text("t1\nt2\n")  # t2: no files either
    assert voc_tool.main(["--voc", str(voc), "--dst", str(dst), "--workers", "0"]) == 2
    assert "v2.png" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in lists} == lists


# ----------------------------------------------------------------------------- prepare_cityscapes


def test_prepare_cityscapes_fixture_maps_void_ids_to_255(tmp_path):
    src = tmp_path / "cityscapes"
    ids = np.array([[0, 1, 4, 6, 7, 8, 9, 26], [31, 33, 29, 30, 14, 22, 23, 24]], np.uint8)
    for split, city in (("train", "aachen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        write_png(src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.zeros((2, 8, 3), np.uint8))
        write_png(src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    dst = tmp_path / "city"
    assert city_tool.main(["--src", str(src), "--dst", str(dst), "--workers", "0"]) == 0
    expected = np.array([[255, 255, 255, 255, 0, 1, 255, 13], [16, 18, 255, 255, 255, 9, 10, 11]], np.uint8)
    out = cv2.imread(str(dst / "segmentation/train/aachen_000000_000019_gtFine.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(out, expected)
    assert read_list(dst / "config_new/val.txt", "pairs") == [
        "/images/val/lindau_000000_000019.png\t/segmentation/val/lindau_000000_000019_gtFine.png"
    ]
    assert np.array_equal(SegDataset(LAYOUTS["city"], dst, dst / "config_new/train.txt")[0]["label"], expected)


def test_prepare_cityscapes_on_the_real_sample(tmp_path):
    if not (CITY_SAMPLE / "leftImg8bit").is_dir():
        pytest.skip("shared Cityscapes sample not present")
    dst = tmp_path / "city"
    assert city_tool.prepare_cityscapes(CITY_SAMPLE, dst, splits=("train",), workers=0, progress=False) == {"train": 8}
    entries = read_list(dst / "config_new/train.txt", "pairs")
    assert entries[0] == "/images/train/aachen_000000_000019.png\t/segmentation/train/aachen_000000_000019_gtFine.png"
    ds = SegDataset(LAYOUTS["city"], dst, dst / "config_new/train.txt")
    sample = ds[0]
    assert sample["image"].shape == (1024, 2048, 3) and sample["label"].shape == (1024, 2048)
    source = cv2.imread(
        str(CITY_SAMPLE / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED
    )
    for label_id in np.unique(source):
        assert (sample["label"][source == label_id] == CITY_LABELID_TO_TRAINID.get(int(label_id), 255)).all()
    assert (sample["label"] == 0).mean() > 0.1  # road is there
    # val holds labels without images: converting it is refused with the folder named, before train is converted
    with pytest.raises(UserError, match="leftImg8bit/val"):
        city_tool.prepare_cityscapes(CITY_SAMPLE, tmp_path / "both", workers=0, progress=False)
    assert not (tmp_path / "both").exists()
    # the images without their gtFine folder: the folder named, once
    (tmp_path / "nolabels").mkdir()
    (tmp_path / "nolabels" / "leftImg8bit").symlink_to(CITY_SAMPLE / "leftImg8bit")
    with pytest.raises(UserError, match=r"nolabels/gtFine/train: folder not found"):
        city_tool.prepare_cityscapes(tmp_path / "nolabels", tmp_path / "both", splits=("train",), progress=False)


# ----------------------------------------------------------------------------- bench_data


def test_measure_loader_reports_throughput(synthetic_root):
    from furnace.config import prepare, synthetic_config
    from furnace.tools.bench_data import measure_loader

    cfg = synthetic_config()
    cfg.update(
        data_root=str(synthetic_root.parent),
        num_classes=7,
        crop_size=32,
        global_batch=2,
        labeled_ratio=2,
        num_workers=0,
    )
    result = measure_loader(prepare(cfg), num_batches=3, warmup=1)
    assert result["samples_per_s"] > 0 and result["micro_batch"] == 2 and result["batches"] == 3


def test_bench_data_reports_the_decode_floor_and_the_ratio(synthetic_root):
    from furnace.config import prepare, synthetic_config
    from furnace.tools.bench_data import measure_with_floor

    cfg = synthetic_config()
    cfg.update(data_root=str(synthetic_root.parent), num_classes=7, crop_size=32, global_batch=2,
               labeled_ratio=2, num_workers=0)
    result = measure_with_floor(prepare(cfg), num_batches=2, repeats=2, need_unlabeled=True)
    assert result["decode_floor_samples_per_s"] > 0 and len(result["runs_decode_floor"]) == 2
    assert result["ratio_to_decode_floor"] == pytest.approx(
        result["samples_per_s_per_worker"] / result["decode_floor_samples_per_s"], abs=1e-3)
