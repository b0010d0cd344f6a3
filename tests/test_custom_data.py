"""Your own data in the folder layout: the synthetic dataset converted into images/, labels/, classes.txt and
run through the real command lines (make_splits, check, both teachers, the MGD student, eval, predict, export),
and each bad input refused in one line naming the file before any compute."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from furnace.datasets.layouts import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, folder_layout, read_classes
from furnace.datasets.make_synthetic import generate
from furnace.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CUSTOM = REPO / "exp.custom"


def run(args, cwd=REPO, env=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def make_folder_dataset(root: Path, num_train=40, num_val=8, size=48, val_list=True) -> Path:
    """The synthetic dataset in the folder layout: images/*.jpg, labels/*.png, classes.txt with colours and,
    when ``val_list``, a val.txt naming the synthetic val images (train.txt is left to make_splits)."""
    src = root.parent / f"{root.name}_synthetic"
    generate(src, seed=0, num_train=num_train, num_val=num_val, size=size, ratios=(8,))
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for split in ("train_aug", "val"):
        for image in sorted((src / split / "image").glob("*.jpg")):
            shutil.copy(image, root / "images" / image.name)
            shutil.copy(src / split / "label" / f"{image.stem}.png", root / "labels" / f"{image.stem}.png")
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in zip(SYNTHETIC_CLASSES, SYNTHETIC_COLORS)]
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    if val_list:
        (root / "val.txt").write_text("".join(f"{p.stem}\n" for p in sorted((src / "val" / "image").glob("*.jpg"))))
    shutil.rmtree(src)
    return root


@pytest.fixture
def folder_data(tmp_path):
    return make_folder_dataset(tmp_path / "mydata", num_train=16, num_val=4, size=32)


def error_line(proc) -> str:
    """The one ``error:`` line of a failed command (and nothing after it)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------- the layout


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


def test_make_splits_folder_writes_lists_and_the_layout_reads_them(folder_data):
    proc = run(["-m", "furnace.datasets.make_splits", "--folder", folder_data, "--ratios", "8", "4"])
    assert proc.returncode == 0, proc.stderr
    train = (folder_data / "train.txt").read_text().split()
    val = (folder_data / "val.txt").read_text().split()
    assert len(train) == 16 and len(val) == 4 and not set(train) & set(val)
    labeled = (folder_data / "splits" / "train_labeled_1-8.txt").read_text().split()
    unlabeled = (folder_data / "splits" / "train_unlabeled_1-8.txt").read_text().split()
    assert len(labeled) == 2 and sorted(labeled + unlabeled) == sorted(train)
    layout = folder_layout(folder_data, 7)
    image, label, name = layout.resolve(train[0], folder_data)
    assert image == folder_data / "images" / f"{train[0]}.jpg" and label.parent.name == "labels" and name == train[0]
    assert layout.class_names == SYNTHETIC_CLASSES and layout.palette.tolist() == [list(c) for c in SYNTHETIC_COLORS]
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", folder_data, "--workers", "0"])
    assert proc.returncode == 0 and proc.stdout.startswith("OK:"), proc.stdout + proc.stderr


def test_make_splits_folder_holds_out_a_val_share_when_no_val_list(tmp_path):
    root = make_folder_dataset(tmp_path / "d", num_train=16, num_val=4, size=32, val_list=False)
    proc = run(["-m", "furnace.datasets.make_splits", "--folder", root, "--val-fraction", "0.25", "--ratios", "8"])
    assert proc.returncode == 0, proc.stderr
    assert len((root / "val.txt").read_text().split()) == 5 and len((root / "train.txt").read_text().split()) == 15


def test_ignore_index_is_configurable_and_read_as_255(folder_data):
    from furnace.datasets.dataset import read_label

    path = folder_data / "labels" / "custom_ignore.png"
    cv2.imwrite(str(path), np.array([[0, 6], [7, 1]], np.uint8))
    assert read_label(path, 7, ignore_index=7).tolist() == [[0, 6], [255, 1]]
    with pytest.raises(UserError, match=r"custom_ignore.png: label values \{7\} are outside"):
        read_label(path, 7)  # 7 is a class-count overflow when 255 is the void value
    with pytest.raises(UserError, match="ignore_index=3 must lie in 7..255"):
        folder_layout(folder_data, 7, ignore_index=3)


# ----------------------------------------------------------------------------- bad input


def test_image_without_label_is_named(folder_data):
    cv2.imwrite(str(folder_data / "images" / "lonely.png"), np.zeros((32, 32, 3), np.uint8))
    line = error_line(run(["-m", "furnace.datasets.make_splits", "--folder", folder_data]))
    assert "lonely.png: image has no label" in line and "labels/lonely.png" in line and "add the index PNG" in line


def test_listed_image_without_label_fails_the_check(folder_data):
    assert run(["-m", "furnace.datasets.make_splits", "--folder", folder_data, "--ratios", "8"]).returncode == 0
    victim = (folder_data / "val.txt").read_text().split()[0]
    (folder_data / "labels" / f"{victim}.png").unlink()
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", folder_data, "--workers", "0"])
    assert proc.returncode == 1 and f"labels/{victim}.png" in proc.stdout, proc.stdout + proc.stderr


def test_label_value_above_the_class_count_is_named(folder_data):
    assert run(["-m", "furnace.datasets.make_splits", "--folder", folder_data, "--ratios", "8"]).returncode == 0
    victim = (folder_data / "train.txt").read_text().split()[0]
    label = cv2.imread(str(folder_data / "labels" / f"{victim}.png"), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 9
    cv2.imwrite(str(folder_data / "labels" / f"{victim}.png"), label)
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", folder_data, "--workers", "0"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"labels/{victim}.png: label values {{9}} are outside the 7 classes" in proc.stdout


def test_classes_file_and_num_classes_disagreeing_stop_training_before_compute(folder_data, tmp_path):
    assert run(["-m", "furnace.datasets.make_splits", "--folder", folder_data, "--ratios", "8"]).returncode == 0
    proc = run(["train.py", "num_classes=5", "pretrained=", f"output_dir={tmp_path / 'out'}"],
               cwd=CUSTOM / "custom.resnet101_deeplabv3plus", env={"DATA_ROOT": str(folder_data)})
    line = error_line(proc)
    assert "classes.txt: lists 7 classes but num_classes=5; set num_classes=7" in line
    assert not (tmp_path / "out" / "checkpoints").exists()
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", folder_data, "--num-classes", "5"])
    assert "classes.txt: lists 7 classes but num_classes=5" in error_line(proc)


def test_missing_classes_file_is_named(folder_data):
    (folder_data / "classes.txt").unlink()
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", folder_data])
    assert "classes.txt: classes file not found; write one class name per line" in error_line(proc)


# ----------------------------------------------------------------------------- end to end

SMALL = ["pretrained=", "width_mult=0.25", "head_channels=64", "crop_size=32", "eval_crop=32", "epochs=1",
         "num_workers=0", "global_batch=4", "channels_last=true", "log_every=1"]


@pytest.mark.slow
def test_own_data_teachers_mgd_student_eval_predict_export(tmp_path):
    root = make_folder_dataset(tmp_path / "mydata", num_train=40, num_val=8, size=32)
    weights = tmp_path / "weights"
    env = {"DATA_ROOT": str(root), "WEIGHT_DIR": str(weights)}  # NUM_CLASSES comes from classes.txt
    assert run(["-m", "furnace.datasets.make_splits", "--folder", root, "--ratios", "8"]).returncode == 0
    proc = run(["-m", "furnace.datasets.check", "--dataset", "folder", "--root", root, "--workers", "0"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    for arch in ("resnet101", "wrn50_2"):
        proc = run(["train.py", *SMALL, f"output_dir={tmp_path / arch}"], cwd=CUSTOM / f"custom.{arch}_deeplabv3plus",
                   env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert (weights / "teachers" / f"mydata_1-8_{arch}.pth").is_file()
    student = CUSTOM / "custom.resnet18_deeplabv3plus"
    out = tmp_path / "student"
    proc = run(["train.py", *SMALL, f"output_dir={out}"], cwd=student, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "training MGD" in (out / "log.txt").read_text()
    proc = run(["eval.py", "-e", "last", *SMALL, f"output_dir={out}"], cwd=student, env=env)
    assert proc.returncode == 0 and "mIoU" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stripes_dark" in proc.stdout  # per-class IoU under the names of classes.txt

    snapshot = sorted(out.glob("checkpoints/epoch-*.pth"))[-1]
    from furnace.models import read_segmentor_meta

    meta = read_segmentor_meta(snapshot)
    assert meta["dataset"] == "folder" and meta["class_names"] == list(SYNTHETIC_CLASSES)
    assert meta["palette"] == [list(c) for c in SYNTHETIC_COLORS] and meta["eval"]["crop"] == 32

    preds = tmp_path / "pred"
    proc = run(["-m", "furnace.tools.predict", snapshot, root / "val.txt", "--out", preds], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_folder_predictions(root, preds)

    onnx = tmp_path / "student.onnx"
    proc = run(["-m", "furnace.tools.export", snapshot, "--out", onnx, "--check-sizes", "1x32x32", "2x40x56",
                "--no-latency"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["num_classes"] == 7
    proc = run(["-m", "furnace.tools.predict", snapshot, root / "val.txt", "--onnx", onnx, "--out", tmp_path / "p2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (root / "val.txt").read_text().split():
        a, b = (cv2.imread(str(d / "index" / f"{name}.png"), cv2.IMREAD_UNCHANGED) for d in (preds, tmp_path / "p2"))
        assert (a == b).mean() >= 0.999


def _check_folder_predictions(root: Path, preds: Path) -> None:
    names = (root / "val.txt").read_text().split()
    palette = np.array(SYNTHETIC_COLORS, np.uint8)
    for name in names:
        image = cv2.imread(str(root / "images" / f"{name}.jpg"))
        index = cv2.imread(str(preds / "index" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(preds / "color" / f"{name}.png"))[..., ::-1]
        over = cv2.imread(str(preds / "overlay" / f"{name}.png"))
        assert index.shape == image.shape[:2] and color.shape == over.shape == image.shape
        assert index.max() < 7 and (color == palette[index]).all()
