"""Deployment: ONNX export matches PyTorch for every network of the method, the export and predict command
lines on real files (the Cityscapes sample images at 2048x1024), and the refusal of a mismatched ONNX file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from furnace.datasets.layouts import CITY_COLORS, CITY_CLASSES, VOC_CLASSES
from furnace.models import read_segmentor_meta, save_segmentor
from furnace.models.weights import dataset_record
from furnace.models import DeepLabV3Plus
from furnace.tools.export import OrtNetwork, check_agreement, compare, export_onnx, onnx_meta
from furnace.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CITY_SAMPLE = REPO.parent / "shared" / "data" / "cityscapes_sample"


def run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def segmentor(path, arch="resnet18", num_classes=7, seed=0, extra=None, **options):
    torch.manual_seed(seed)
    net = DeepLabV3Plus.from_arch(arch, num_classes, **options).eval()
    save_segmentor(net, path, extra=extra)
    return net


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2", "resnet101", "wrn50_2"])
def test_onnx_runtime_matches_pytorch(tmp_path, arch):
    """Both students and both teachers at full width, random weights, eval mode; batch, H and W dynamic."""
    torch.manual_seed(0)
    net = DeepLabV3Plus.from_arch(arch, 21).eval()
    for m in net.modules():  # BN statistics away from (0, 1), so that folding them is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{arch}.onnx"
    exporter = export_onnx(net, path, onnx_meta(net, {"num_classes": 21}))
    assert exporter in ("dynamo", "torchscript")
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    rows = compare(net, OrtNetwork(path), [(1, 64, 64), (2, 72, 96)])
    check_agreement(rows, path)  # <= 1e-4 relative, >= 99.9 % argmax
    assert [r["shape"] for r in rows] == [[1, 3, 64, 64], [2, 3, 72, 96]]
    assert all(r["rel_max_diff"] <= 1e-4 and r["argmax_equal"] >= 0.999 for r in rows)


def test_disagreement_fails_loudly():
    rows = [{"shape": [1, 3, 64, 64], "rel_max_diff": 3e-3, "argmax_equal": 1.0}]
    with pytest.raises(UserError, match=r"m.onnx: ONNX Runtime disagrees with PyTorch on input \[1, 3, 64, 64\]"):
        check_agreement(rows, "m.onnx")
    check_agreement([{"shape": [1, 3, 8, 8], "rel_max_diff": 5e-5, "argmax_equal": 0.9995}], "m.onnx")


def test_export_cli_writes_checked_file_with_class_metadata_and_latency(tmp_path):
    ck = tmp_path / "voc.pth"
    segmentor(ck, num_classes=21, width_mult=0.25, head_channels=64, extra=dataset_record("voc", 21, "x"))
    out, report = tmp_path / "m.onnx", tmp_path / "report.json"
    proc = run(["-m", "furnace.tools.export", ck, "--out", out, "--check-sizes", "1x64x64", "2x48x80",
                "--latency-sizes", "64x64", "--runs", "1", "--threads", "1", "--json", report])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(report.read_text())
    assert result["opset"] == 17 and result["num_classes"] == 21 and result["exporter"] in ("dynamo", "torchscript")
    assert [r["shape"] for r in result["check"]] == [[1, 3, 64, 64], [2, 3, 48, 80]]
    (lat,) = result["latency"]
    assert lat["size"] == "64x64" and lat["pytorch_eager_ms"] > 0 and lat["onnxruntime_ms"] > 0
    meta = OrtNetwork(out).meta
    assert meta["num_classes"] == 21 and meta["class_names"] == list(VOC_CLASSES) and meta["dataset"] == "voc"


def test_predict_refuses_an_onnx_file_of_another_class_count(tmp_path):
    seven, city = tmp_path / "seven.pth", tmp_path / "city.pth"
    segmentor(seven, width_mult=0.25, head_channels=64)
    net = segmentor(city, arch="mobilenetv2", num_classes=19, width_mult=0.25, head_channels=64)
    export_onnx(net, tmp_path / "city.onnx", onnx_meta(net, {"num_classes": 19}))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    proc = run(["-m", "furnace.tools.predict", seven, image, "--onnx", tmp_path / "city.onnx", "--out", tmp_path / "o"])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "city.onnx: the ONNX file predicts 19 classes but" in lines[0] and "seven.pth has 7" in lines[0]
    assert "furnace.tools.export" in lines[0] and not (tmp_path / "o" / "index").exists()
    # the .onnx file alone: its metadata gives the classes (19 and no names recorded -> Cityscapes')
    proc = run(["-m", "furnace.tools.predict", tmp_path / "city.onnx", image, "--out", tmp_path / "alone"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    color = cv2.imread(str(tmp_path / "alone" / "color" / "a.png"))[..., ::-1].reshape(-1, 3)
    assert set(map(tuple, color.tolist())) <= set(CITY_COLORS)
    # a classes.txt of another class count is refused the same way
    (tmp_path / "classes.txt").write_text("a\nb\n")
    proc = run(["-m", "furnace.tools.predict", seven, image, "--classes", tmp_path / "classes.txt", "--out", tmp_path / "o"])
    assert proc.returncode == 2 and "classes.txt: lists 2 classes but the network predicts 7" in proc.stderr


def test_predict_reports_unreadable_images_and_goes_on(tmp_path):
    ck = tmp_path / "n.pth"
    segmentor(ck, width_mult=0.25, head_channels=64)  # no recorded classes: 7 -> the synthetic dataset's
    good = tmp_path / "imgs" / "good.jpg"
    good.parent.mkdir()
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    proc = run(["-m", "furnace.tools.predict", ck, tmp_path / "imgs", "--out", tmp_path / "o", "--crop", "32",
                "--scales", "0.75", "1.0", "--flip"])
    assert proc.returncode == 1, proc.stderr
    assert "broken.png: image cannot be decoded" in proc.stderr and "1 image(s) could not be read" in proc.stderr
    for sub in ("index", "color", "overlay"):
        out = cv2.imread(str(tmp_path / "o" / sub / "good.png"), cv2.IMREAD_UNCHANGED)
        assert out.shape[:2] == (50, 70)
    proc = run(["-m", "furnace.tools.predict", ck, tmp_path / "nothing_here", "--out", tmp_path / "o"])
    assert proc.returncode == 2 and "nothing_here: INPUT not found" in proc.stderr


@pytest.mark.skipif(not CITY_SAMPLE.is_dir(), reason="../shared/data/cityscapes_sample is not present")
def test_predict_on_cityscapes_sample_images_at_full_resolution(tmp_path):
    images = sorted((CITY_SAMPLE / "leftImg8bit").rglob("*_leftImg8bit.png"))[:2]
    assert len(images) == 2
    ck = tmp_path / "city.pth"
    segmentor(ck, arch="mobilenetv2", num_classes=19, width_mult=0.25, head_channels=64,
              extra={**dataset_record("cityscapes", 19, "x"), "eval": {"crop": 800, "scales": [1.0], "flip": False}})
    assert read_segmentor_meta(ck)["class_names"] == list(CITY_CLASSES)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[0]}\n")
    out = tmp_path / "pred"
    proc = run(["-m", "furnace.tools.predict", ck, listing, images[1], "--out", out, "--batch", "8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    palette = np.array(CITY_COLORS, np.uint8)
    for image in images:
        index = cv2.imread(str(out / "index" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(out / "color" / f"{image.stem}.png"))[..., ::-1]
        over = cv2.imread(str(out / "overlay" / f"{image.stem}.png"))
        assert index.shape == (1024, 2048) and color.shape == over.shape == (1024, 2048, 3)
        assert index.max() < 19 and (color == palette[index]).all()
        assert len(np.unique(index)) > 1


def test_convert_official_records_the_dataset(tmp_path, fill_weights):
    src = tmp_path / "orig.pth"
    torch.save({"model": fill_weights.original_state_dict("mobilenetv2")}, src)
    dst = tmp_path / "voc.pth"
    proc = run(["-m", "furnace.tools.convert_official", src, dst, "--arch", "mobilenetv2", "--dataset", "voc"])
    assert proc.returncode == 0, proc.stderr
    meta = read_segmentor_meta(dst)
    assert meta["dataset"] == "voc" and meta["class_names"] == list(VOC_CLASSES) and len(meta["palette"]) == 21
    proc = run(["-m", "furnace.tools.convert_official", src, tmp_path / "c.pth", "--arch", "mobilenetv2",
                "--dataset", "cityscapes"])
    assert proc.returncode == 2 and "has 21 classes but --dataset cityscapes has 19" in proc.stderr


def test_export_of_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    """Every tool ends on a user error the same way: one ``error:`` line naming the file, exit status 2."""
    proc = run(["-m", "furnace.tools.export", tmp_path / "nope.pth", "--out", tmp_path / "x.onnx"])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "nope.pth" in lines[0] and not (tmp_path / "x.onnx").exists()
