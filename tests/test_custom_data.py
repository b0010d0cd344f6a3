"""Your own data in the folder layout: an image in images/ with labels/<stem>.png is labeled, one without is
unlabeled (the natural partition). make_splits and check on such a folder, the files users have (extensions in
any case, spaces, grayscale, 16-bit, palette labels, JPEG trailers), a void value other than 255 through the real
loader, each bad input refused in one line naming the file before any compute, and all three stages run end to
end through the real command lines."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import furnace.methods  # noqa: F401 (registers the methods a config may name)
from furnace.config import folder_config, prepare
from furnace.datasets import SegDataset, TrainLoader, split_paths
from furnace.datasets import check as check_tool
from furnace.datasets import make_splits as make_splits_tool
from furnace.datasets.batch import LABEL_L
from furnace.datasets.layouts import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, folder_layout, read_classes
from furnace.datasets.make_synthetic import render_sample
from furnace.datasets.dataset import read_label
from furnace.run import train_main
from furnace.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CUSTOM = REPO / "exp.custom"
VOID = 200  # the void value of the generated labels (declared with ignore_index / IGNORE_INDEX)
# The files users have, by stem: the file each one is written as (see write_folder_dataset).
SPECIAL = {"photo 01": "photo 01.JPG", "lab_00002": "lab_00002.Png", "scan 1": "scan 1.png",
           "deep_00001": "deep_00001.png", "IMG_0002": "IMG_0002.jpeg"}
PALETTE_LABEL = "lab_00001"  # its label is a palette PNG


def run(args, cwd=REPO, env=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def write_folder_dataset(root: Path, n_labeled=12, n_unlabeled=30, size=32, void=VOID) -> Path:
    """A folder dataset of synthetic scenes (7 classes, classes.txt with colours): ``n_labeled`` images with a
    label (first row void = ``void``), ``n_unlabeled`` without. Among them the files users have (:data:`SPECIAL`):
    a name with a space and an upper-case extension, a ``.Png``, a grayscale PNG, a 16-bit PNG, a JPEG with a
    2 KiB trailer, and one palette label."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    stems = [f"lab_{i:05d}" for i in range(n_labeled)] + [f"unl_{i:05d}" for i in range(n_unlabeled)]
    stems[0] = "photo 01"
    if n_unlabeled >= 3:
        stems[n_labeled: n_labeled + 3] = ["scan 1", "deep_00001", "IMG_0002"]
    for i, stem in enumerate(stems):
        image, label = render_sample(np.random.default_rng(i), (size, size))
        name = SPECIAL.get(stem, f"{stem}.jpg")
        if stem == "scan 1":
            cv2.imwrite(str(root / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        elif stem == "deep_00001":
            cv2.imwrite(str(root / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
        elif name.lower().endswith(".png"):
            cv2.imwrite(str(root / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        else:
            trailer = bytes(range(256)) * 8 if stem == "IMG_0002" else b""
            (root / "images" / name).write_bytes(jpeg_bytes(image) + trailer)
        if i >= n_labeled:
            continue
        label[0] = void
        if stem == PALETTE_LABEL:
            img = Image.fromarray(label, mode="P")
            img.putpalette([c for i in range(256) for c in (i, 255 - i, 0)])
            img.save(root / "labels" / f"{stem}.png")
        else:
            cv2.imwrite(str(root / "labels" / f"{stem}.png"), label)
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in zip(SYNTHETIC_CLASSES, SYNTHETIC_COLORS)]
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folder_data(tmp_path):
    return write_folder_dataset(tmp_path / "mydata")


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def error_line(err: str) -> str:
    """The one ``error:`` line of a failed command's stderr."""
    found = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(found) == 1, err
    return found[0]


def folder_cfg(root, *overrides):
    return prepare(folder_config(), [f"data_root={root}", f"ignore_index={VOID}", *overrides])


# ----------------------------------------------------------------------------- the layout and its lists


def test_classes_file_names_and_colours(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background 0 0 0\n\ntraffic light 250 170 30\nroad\n")
    names, palette = read_classes(path)
    assert names == ["background", "traffic light", "road"]
    assert palette[:2].tolist() == [[0, 0, 0], [250, 170, 30]] and palette.shape == (3, 3)
    path.write_text("a\nb\n")
    assert read_classes(path) == (["a", "b"], None)
    path.write_text("a 0 0 300\n")
    with pytest.raises(UserError, match=r"classes.txt:1: colour .* above 255"):
        read_classes(path)


def test_make_splits_writes_the_natural_partition(folder_data, capsys):
    root = folder_data
    for name in ("photo.heic", "notes.txt", ".DS_Store"):  # not images: named, left out (hidden files silently)
        (root / "images" / name).write_bytes(b"x")
    assert make_splits_tool.main(["--folder", str(root)]) == 0
    out = capsys.readouterr().out
    assert "12 images with a label (labels/<stem>.png), 30 without" in out
    assert "note: 2 file(s) of images/ left out" in out and ": notes.txt, photo.heic (convert" in out
    for name in ("photo.heic", "notes.txt", ".DS_Store"):
        (root / "images" / name).unlink()
    assert f"natural partition: 11 labeled -> {root / 'splits/labeled.txt'}, 30 unlabeled" in out
    val, labeled, unlabeled = lines(root / "val.txt"), lines(root / "splits/labeled.txt"), lines(
        root / "splits/unlabeled.txt")
    with_label = sorted(p.stem for p in (root / "labels").iterdir())
    assert len(val) == 1 and sorted(val + labeled) == with_label
    assert sorted(unlabeled) == sorted({p.stem for p in (root / "images").iterdir()} - set(with_label))
    assert {"scan 1", "deep_00001", "IMG_0002"} <= set(unlabeled) and "photo 01" in val + labeled
    assert not (root / "train.txt").exists()
    before = {p: p.read_bytes() for p in (root / "val.txt", root / "splits/labeled.txt")}
    assert make_splits_tool.main(["--folder", str(root), "--val-fraction", "0.5"]) == 0  # val.txt is kept
    assert "val: 1 labeled images -> " in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before

    cfg = folder_cfg(root)  # the exp.custom recipe's defaults: the natural partition, a budget in iterations
    assert cfg.labeled_ratio == 0 and cfg.train_iters == 40000 and cfg.epochs == 0
    assert split_paths(cfg) == (root / "splits/labeled.txt", root / "splits/unlabeled.txt", root / "val.txt")
    layout = folder_layout(root, 7, VOID)
    lab = SegDataset(layout, root, root / "splits/labeled.txt")
    for i, stem in enumerate(labeled):
        sample = lab[i]
        assert sample["name"] == stem and (sample["label"][0] == 255).all()
        assert set(np.unique(sample["label"][1:])) <= set(range(7))
    unl = SegDataset(layout, root, root / "splits/unlabeled.txt", with_label=False)
    assert all(unl[i]["image"].shape == (32, 32, 3) for i in range(len(unl)))


def test_make_splits_refuses_what_cannot_be_split_and_writes_nothing(folder_data, capsys):
    root = folder_data
    (root / "val.txt").write_text("lab_00003\nunl_00010\n")
    assert make_splits_tool.main(["--folder", str(root)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{root / 'val.txt'}: 'unl_00010' is not a labeled image" in line and "val images need labels" in line
    (root / "val.txt").unlink()
    (root / "images/lab_00004.png").write_bytes((root / "images/lab_00004.jpg").read_bytes())
    assert make_splits_tool.main(["--folder", str(root)]) == 2
    assert "lab_00004.jpg: lab_00004.png has the same stem; rename one" in error_line(capsys.readouterr().err)
    (root / "images/lab_00004.png").unlink()
    # a label nobody can use is named, not passed over: a JPEG label, a label whose image is missing or
    # differs in case (labels are matched by stem)
    label = root / "labels/lab_00004.png"
    for name, message in [("lab_00004.jpg", "lab_00004.jpg: labels are PNG index maps"),
                          ("lonely.png", "lonely.png: no image of that stem in images/"),
                          ("LAB_00004.png", "LAB_00004.png: no image of that stem in images/ (matched by stem, case "
                                            "included; images/ has lab_00004)")]:
        extra = root / "labels" / name
        extra.write_bytes(label.read_bytes())
        assert make_splits_tool.main(["--folder", str(root)]) == 2
        assert message in error_line(capsys.readouterr().err)
        extra.unlink()
    for path in (root / "images").glob("unl_*"):
        path.unlink()
    for stem in ("scan 1", "deep_00001", "IMG_0002"):
        (root / "images" / SPECIAL[stem]).unlink()
    assert make_splits_tool.main(["--folder", str(root)]) == 2
    assert "every image has a label, so none is unlabeled" in error_line(capsys.readouterr().err)
    assert not (root / "splits").exists() and not (root / "val.txt").exists()


def test_make_splits_ratios_simulate_a_partition_adding_the_images_without_labels(folder_data, capsys):
    root = folder_data
    assert make_splits_tool.main(["--folder", str(root), "--ratios", "8", "4"]) == 0
    out = capsys.readouterr().out
    train, val = lines(root / "train.txt"), lines(root / "val.txt")
    assert len(train) == 11 and len(val) == 1 and not set(train) & set(val)
    labeled = lines(root / "splits/train_labeled_1-8.txt")
    unlabeled = lines(root / "splits/train_unlabeled_1-8.txt")
    assert len(labeled) == 2 and len(unlabeled) == 9 + 30 and set(labeled) <= set(train)
    assert "1/8: 2 labeled -> " in out and "(30 without a label)" in out
    cfg = folder_cfg(root, "labeled_ratio=8")  # a simulated partition trains epochs_per_ratio
    assert cfg.epochs == 34 and cfg.train_iters == 0
    assert split_paths(cfg)[0] == root / "splits/train_labeled_1-8.txt"
    assert check_tool.main(["--dataset", "folder", "--root", str(root), "--ignore-index", str(VOID),
                            "--workers", "0"]) == 0
    assert capsys.readouterr().out.startswith("OK:")


def test_folder_lists_hold_stems_with_spaces_but_no_tab_or_folder(folder_data):
    layout = folder_layout(folder_data, 7, VOID)
    for text, line in (("photo 01\nlab_00003\tx\n", 2), ("images/lab_00003\n", 1)):
        (folder_data / "list.txt").write_text(text)
        with pytest.raises(UserError, match=rf"list.txt:{line}: expected one image file stem of images/"):
            SegDataset(layout, folder_data, folder_data / "list.txt")


def test_the_files_users_have_are_read_as_cv2_imread_reads_them(folder_data):
    """Extensions in any case resolve on a case-sensitive file system; grayscale and 16-bit images come as
    3-channel 8-bit; a JPEG trailer is ignored; a palette label is its indices."""
    root = folder_data
    stems = list(SPECIAL) + [PALETTE_LABEL, "lab_00005"]
    (root / "list.txt").write_text("".join(f"{s}\n" for s in stems))
    ds = SegDataset(folder_layout(root, 7, VOID), root, root / "list.txt", with_label=False)
    for i, stem in enumerate(stems):
        path, label_path, name = ds.files(i)
        assert path == root / "images" / SPECIAL.get(stem, f"{stem}.jpg") and name == stem
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.array_equal(ds[i]["image"], expected), stem
    trailer = ds[stems.index("IMG_0002")]["image"]
    assert np.array_equal(trailer, cv2.imdecode(np.frombuffer((root / "images/IMG_0002.jpeg").read_bytes()[:-2048],
                                                              np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    gray = ds[stems.index("scan 1")]["image"]
    assert (gray[..., 0] == gray[..., 2]).all()
    label_path = root / "labels" / f"{PALETTE_LABEL}.png"
    assert Image.open(label_path).mode == "P"
    expected = render_sample(np.random.default_rng(1), (32, 32))[1]
    assert np.array_equal(read_label(label_path, 7, VOID)[1:], expected[1:])


def test_ignore_index_is_configurable_and_read_as_255(folder_data):
    path = folder_data / "labels" / "custom_ignore.png"
    cv2.imwrite(str(path), np.array([[0, 6], [7, 1]], np.uint8))
    assert read_label(path, 7, ignore_index=7).tolist() == [[0, 6], [255, 1]]
    with pytest.raises(UserError, match=r"custom_ignore.png: label values \{7\} are outside"):
        read_label(path, 7)  # 7 is a class-count overflow when 255 is the void value
    with pytest.raises(UserError, match="ignore_index=3 must lie in 7..255"):
        folder_layout(folder_data, 7, ignore_index=3)


def test_a_void_value_other_than_255_reaches_the_batches_as_255(tmp_path):
    """The crash of ignore_index=200: labels were read with void as 255 but crops padded with 200, a target no
    loss ignores. Through the real loader with crops larger than the images: only class ids and 255."""
    root = write_folder_dataset(tmp_path / "void", n_labeled=6, n_unlabeled=6, size=24)
    assert make_splits_tool.main(["--folder", str(root)]) == 0
    cfg = folder_cfg(root, "crop_size=40", "global_batch=2", "num_workers=0", "train_scales=[0.5,1.0]")
    loader = TrainLoader(cfg)
    assert (loader.n_labeled, loader.n_unlabeled) == (5, 6)
    seen = set()
    for batch in loader.epoch(0):
        seen |= set(batch[LABEL_L].unique().tolist())
    assert 255 in seen and seen <= set(range(7)) | {255}
    ce = torch.nn.functional.cross_entropy(torch.zeros(1, 7, 40, 40), batch[LABEL_L][:1].long(), ignore_index=255)
    assert torch.isfinite(ce)


def test_an_epoch_is_the_larger_list_with_the_smaller_oversampled(tmp_path):
    """10 labeled and 10,000 unlabeled: 10,000 // global_batch iterations, every labeled image 1,000 times."""
    from furnace.datasets.loader import STREAM_LABELED

    root = write_folder_dataset(tmp_path / "few", n_labeled=11, n_unlabeled=3, size=16)
    for i in range(10000 - 3):  # hard links: 10,000 unlabeled images without 10,000 encodings
        os.link(root / "images/IMG_0002.jpeg", root / f"images/many_{i:05d}.jpg")
    assert make_splits_tool.main(["--folder", str(root)]) == 0
    loader = TrainLoader(folder_cfg(root, "global_batch=8", "num_workers=0"))
    assert (loader.n_labeled, loader.n_unlabeled, loader.iters_per_epoch) == (10, 10000, 1250)
    order = loader.orders(0)[STREAM_LABELED]
    assert len(order) == 10000 and (np.bincount(order, minlength=10) == 1000).all()


# ----------------------------------------------------------------------------- bad input, before any compute


def _break(root: Path, kind: str) -> tuple[str, str]:
    """Damage a prepared folder dataset; ``(the file the message names, what it says)``."""
    first_labeled, first_unlabeled = lines(root / "splits/labeled.txt")[0], lines(root / "splits/unlabeled.txt")[0]
    if kind == "label missing":
        (root / "labels" / f"{first_labeled}.png").unlink()
        return str(root / "labels" / f"{first_labeled}.png"), "label file not found (listed in"
    if kind == "label value":
        path = root / "labels" / f"{first_labeled}.png"
        label = np.zeros((32, 32), np.uint8)
        label[5, 5] = 9
        cv2.imwrite(str(path), label)
        return str(path), f"label values {{9}} are outside the 7 classes (0..6) and ignore {VOID}"
    if kind == "unreadable image":
        path = root / "images" / SPECIAL[first_unlabeled]  # "IMG_0002": sorted first
        path.write_bytes(path.read_bytes()[:300])
        return str(path), "JPEG image is truncated (no end-of-image marker); re-copy or re-download it"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["label missing", "label value", "unreadable image", "classes", "data_root typo"])
def test_bad_input_is_one_line_naming_the_file_before_any_compute(folder_data, tmp_path, monkeypatch, capsys,
                                                                    kind):
    root = folder_data
    assert make_splits_tool.main(["--folder", str(root)]) == 0
    if kind == "classes":
        named, says, overrides = str(root / "classes.txt"), "lists 7 classes but num_classes=5; set num_classes=7", [
            "num_classes=5"]
    elif kind == "data_root typo":
        root = root.with_name(root.name[:-1])
        named, says, overrides = str(root), "dataset folder not found; point data_root", []
    else:
        (named, says), overrides = _break(root, kind), []
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    earlier = {out / "log.txt": b"an earlier run\n", out / "checkpoints/latest.pth": b"earlier state"}
    for path, data in earlier.items():
        path.write_bytes(data)
    monkeypatch.setenv("DATA_ROOT", str(root))
    monkeypatch.setenv("IGNORE_INDEX", str(VOID))
    config = runpy.run_path(str(CUSTOM / "custom.resnet101_deeplabv3plus/config.py"))["config"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_main(config, ["pretrained=", f"output_dir={out}", *overrides])
    assert stop.value.code == 2
    line = error_line(capsys.readouterr().err)
    assert named in line and says in line, line
    assert {p: p.read_bytes() for p in earlier} == earlier and sorted(out.rglob("*")) == sorted(
        [out / "log.txt", out / "checkpoints", out / "checkpoints/latest.pth"])
    argv = ["--dataset", "folder", "--root", str(root), "--ignore-index", str(VOID), "--workers", "0"]
    if kind in ("classes", "data_root typo"):
        assert check_tool.main([*argv, "--num-classes", "5"]) == 2
        assert named in error_line(capsys.readouterr().err)
    else:
        assert check_tool.main(argv) == 1
        assert any(ln.startswith(named) and says in ln for ln in capsys.readouterr().out.splitlines())


# ----------------------------------------------------------------------------- end to end

TINY = ["pretrained=", "width_mult=0.125", "head_channels=16", "crop_size=32", "eval_crop=32", "max_iters=3",
        "num_workers=0", "global_batch=4", "log_every=1"]


@pytest.mark.slow
def test_own_data_with_unlabeled_images_trains_all_three_stages_and_predicts(tmp_path):
    root = write_folder_dataset(tmp_path / "mydata")
    weights = tmp_path / "weights"
    env = {"DATA_ROOT": str(root), "WEIGHT_DIR": str(weights), "IGNORE_INDEX": str(VOID)}  # classes from classes.txt
    proc = run(["-m", "furnace.datasets.make_splits", "--folder", root])
    assert proc.returncode == 0 and "natural partition: 11 labeled" in proc.stdout, proc.stdout + proc.stderr
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", root, "--ignore-index", VOID,
                "--workers", "0"])
    assert proc.returncode == 0 and "42 samples read" in proc.stdout, proc.stdout + proc.stderr

    for arch in ("resnet101", "wrn50_2"):
        proc = run(["train.py", *TINY, f"output_dir={tmp_path / arch}"], cwd=CUSTOM / f"custom.{arch}_deeplabv3plus",
                   env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert (weights / "teachers" / f"mydata_natural_{arch}.pth").is_file()
        assert "data: 11 labeled and 30 unlabeled images" in (tmp_path / arch / "log.txt").read_text()
    student = CUSTOM / "custom.resnet18_deeplabv3plus"
    out = tmp_path / "student"
    proc = run(["train.py", *TINY, f"output_dir={out}"], cwd=student, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "training MGD" in log and "data: 11 labeled and 30 unlabeled images" in log
    assert "train_iters 40000" in log and "stopping at 3" in log
    proc = run(["eval.py", "-e", "last", *TINY, f"output_dir={out}"], cwd=student, env=env)
    assert proc.returncode == 0 and "mIoU" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 1 val images" in proc.stdout and "stripes_dark" in proc.stdout  # class names of classes.txt

    snapshot = sorted(out.glob("checkpoints/epoch-*.pth"))[-1]
    from furnace.models import read_segmentor_meta

    meta = read_segmentor_meta(snapshot)
    assert meta["dataset"] == "folder" and meta["class_names"] == list(SYNTHETIC_CLASSES)
    assert meta["palette"] == [list(c) for c in SYNTHETIC_COLORS] and meta["eval"]["crop"] == 32

    unlabeled = [root / "images" / SPECIAL["scan 1"], root / "images/unl_00005.jpg"]
    preds = tmp_path / "pred"
    proc = run(["-m", "furnace.tools.predict", snapshot, *unlabeled, "--out", preds], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    palette = np.array(SYNTHETIC_COLORS, np.uint8)
    for path in unlabeled:
        index = cv2.imread(str(preds / "index" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(preds / "color" / f"{path.stem}.png"))[..., ::-1]
        assert index.shape == (32, 32) and index.max() < 7 and (color == palette[index]).all()

    onnx = tmp_path / "student.onnx"
    proc = run(["-m", "furnace.tools.export", snapshot, "--out", onnx, "--check-sizes", "1x32x32", "--no-latency"])
    assert proc.returncode == 0 and json.loads(proc.stdout)["num_classes"] == 7, proc.stderr[-3000:]
    proc = run(["-m", "furnace.tools.predict", snapshot, *unlabeled, "--onnx", onnx, "--out", tmp_path / "p2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in unlabeled:
        a, b = (cv2.imread(str(d / "index" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
                for d in (preds, tmp_path / "p2"))
        assert (a == b).mean() >= 0.999
