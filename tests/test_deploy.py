"""Deployment: ONNX export matches PyTorch for every network of the method, the export and predict command
lines on real files (the Cityscapes sample images at 2048x1024), the refusal of a mismatched ONNX file, INT8
export, eval.py -e FILE.onnx, and the torch-free runtime (furnace.runtime)."""
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
from furnace.models import DeepLabV3Plus, read_segmentor_meta, save_segmentor
from furnace.models.weights import dataset_record
from furnace.tools.export import OrtNetwork, check_agreement, compare, export_onnx, onnx_meta
from furnace.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CITY_SAMPLE = REPO.parent / "shared" / "data" / "cityscapes_sample"


def run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def call(main, args, capsys):
    """A command's ``main`` run in this process (the subprocess start-up, mostly importing torch, is ~5 s):
    ``(exit status, stdout, stderr)``."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


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


def test_predict_refuses_an_onnx_file_of_another_class_count(tmp_path, capsys):
    from furnace.tools import predict

    seven, city = tmp_path / "seven.pth", tmp_path / "city.pth"
    segmentor(seven, width_mult=0.25, head_channels=64)
    net = segmentor(city, arch="mobilenetv2", num_classes=19, width_mult=0.25, head_channels=64)
    export_onnx(net, tmp_path / "city.onnx", onnx_meta(net, {"num_classes": 19}))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    code, _, err = call(predict.main, [seven, image, "--onnx", tmp_path / "city.onnx", "--out", tmp_path / "o"], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "city.onnx: the ONNX file predicts 19 classes but" in lines[0] and "seven.pth has 7" in lines[0]
    assert "furnace.tools.export" in lines[0] and not (tmp_path / "o" / "index").exists()
    # the .onnx file alone: its metadata gives the classes (19 and no names recorded -> Cityscapes')
    code, _, err = call(predict.main, [tmp_path / "city.onnx", image, "--out", tmp_path / "alone"], capsys)
    assert code == 0, err[-2000:]
    color = cv2.imread(str(tmp_path / "alone" / "color" / "a.png"))[..., ::-1].reshape(-1, 3)
    assert set(map(tuple, color.tolist())) <= set(CITY_COLORS)
    # a classes.txt of another class count is refused the same way
    (tmp_path / "classes.txt").write_text("a\nb\n")
    code, _, err = call(predict.main, [seven, image, "--classes", tmp_path / "classes.txt", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "classes.txt: lists 2 classes but the network predicts 7" in err


def test_predict_reports_unreadable_images_and_goes_on(tmp_path, capsys):
    from furnace.tools import predict

    ck = tmp_path / "n.pth"
    segmentor(ck, width_mult=0.25, head_channels=64)  # no recorded classes: 7 -> the synthetic dataset's
    good = tmp_path / "imgs" / "good.jpg"
    good.parent.mkdir()
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    code, _, err = call(predict.main, [ck, tmp_path / "imgs", "--out", tmp_path / "o", "--crop", "32",
                "--scales", "0.75", "1.0", "--flip"], capsys)
    assert code == 1, err
    assert "broken.png: image cannot be decoded" in err and "1 image(s) could not be read" in err
    for sub in ("index", "color", "overlay"):
        out = cv2.imread(str(tmp_path / "o" / sub / "good.png"), cv2.IMREAD_UNCHANGED)
        assert out.shape[:2] == (50, 70)
    code, _, err = call(predict.main, [ck, tmp_path / "nothing_here", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "nothing_here: INPUT not found" in err


def test_predict_options_are_checked_before_the_model_loads_and_outputs_stay_out_of_the_inputs(tmp_path, capsys):
    from furnace.runtime import predict as runtime_predict
    from furnace.tools import predict

    ck = tmp_path / "n.pth"
    segmentor(ck, width_mult=0.25, head_channels=64)
    imgs = write_images(tmp_path / "imgs", 2)
    (tmp_path / "afile").write_text("x")
    cases = [(["--batch", "0"], "--batch 0: give at least 1"), (["--crop", "8"], "--crop 8: give at least 16"),
             (["--crop", "32", "--whole"], "--crop 32 and --whole: give one"),
             (["--scales", "0", "1"], "--scales 0.0 1.0: every scale must be above 0"),
             (["--alpha", "3"], "--alpha 3.0: give a colour weight from 0 to 1")]
    if not torch.cuda.is_available():
        code, _, err = call(predict.main, [ck, imgs, "--out", tmp_path / "o", "--device", "cuda"], capsys)
        assert code == 2 and "--device cuda: no CUDA device is visible; use --device cpu or auto" in err, err
    for main, model in ((predict.main, ck), (runtime_predict.main, tmp_path / "missing.onnx")):
        for extra, message in [*cases, (["--out", tmp_path / "afile"], "afile: is a file; give a folder")]:
            code, _, err = call(main, [model, imgs, "--out", tmp_path / "o", *extra], capsys)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert code == 2 and len(lines) == 1 and message in lines[0], (extra, err)
        assert not (tmp_path / "o").exists()
    # a run whose output folder lies inside its input folder reads the same images the second time
    for _ in range(2):
        code, out, err = call(predict.main, [ck, imgs, "--out", imgs / "pred"], capsys)
        assert code == 0 and "2 of 2 image(s)" in out, err


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


def test_convert_official_records_the_dataset(tmp_path, fill_weights, capsys):
    from furnace.tools import convert_official

    src = tmp_path / "orig.pth"
    torch.save({"model": fill_weights.original_state_dict("mobilenetv2")}, src)
    dst = tmp_path / "voc.pth"
    code, _, err = call(convert_official.main, [src, dst, "--arch", "mobilenetv2", "--dataset", "voc"], capsys)
    assert code == 0, err
    meta = read_segmentor_meta(dst)
    assert meta["dataset"] == "voc" and meta["class_names"] == list(VOC_CLASSES) and len(meta["palette"]) == 21
    code, _, err = call(convert_official.main, [src, tmp_path / "c.pth", "--arch", "mobilenetv2",
                                               "--dataset", "cityscapes"], capsys)
    assert code == 2 and "has 21 classes but --dataset cityscapes has 19" in err


def test_export_of_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    """Every tool ends on a user error the same way: one ``error:`` line naming the file, exit status 2."""
    from furnace.tools import export

    code, _, err = call(export.main, [tmp_path / "nope.pth", "--out", tmp_path / "x.onnx"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "nope.pth" in lines[0] and not (tmp_path / "x.onnx").exists()


# ----------------------------------------------------------------------------- the torch-free runtime, INT8, eval.py -e FILE.onnx

TORCH_BLOCKED = "import sys; sys.modules['torch'] = None; import runpy; runpy.run_module('{}', run_name='__main__')"


def spread_bn(net):
    """BatchNorm statistics drawn at random, so that a random network predicts several classes."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.3, 1.5)
    return net


def balance_classes(net, image: np.ndarray):
    """Rescale the classifier so that every class's logit has mean 0 and std 1 over ``image`` (H, W, 3 uint8
    RGB): a random network then predicts many classes on it instead of one everywhere."""
    from furnace.runtime.images import normalize

    with torch.no_grad():
        logits = net(torch.from_numpy(normalize(image)).permute(2, 0, 1)[None])[0].flatten(1)
        mean, std = logits.mean(1), logits.std(1)
        net.classifier.weight.div_(std[:, None, None, None])
        net.classifier.bias.sub_(mean).div_(std)
    return net


def tiny_student(path, num_classes=7, arch="mobilenetv2", seed=0, dataset="synthetic", eval_record=None, image=None):
    """A tiny student file (width 1/4, head 32) with the dataset's classes and ``eval_record`` recorded;
    with ``image``, its classes balanced on it (:func:`balance_classes`)."""
    torch.manual_seed(seed)
    net = spread_bn(DeepLabV3Plus.from_arch(arch, num_classes, width_mult=0.25, head_channels=32)).eval()
    if image is not None:
        balance_classes(net, image)
    eval_record = eval_record or {"crop": 32, "scales": [1.0], "flip": False}
    save_segmentor(net, path, extra={**dataset_record(dataset, num_classes, "x"), "eval": eval_record})
    return net


def write_images(folder, count, size=(40, 56), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)  # smooth blobs, not per-pixel noise
        image = cv2.resize(base, size[::-1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"img{i}.png"), image)
    return folder


def test_no_runtime_module_imports_torch():
    """furnace.runtime (and furnace, furnace.utils) load in a process where `import torch` fails."""
    code = ("import sys, pkgutil, importlib; sys.modules['torch'] = None; import furnace, furnace.utils, furnace.runtime;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(furnace.runtime.__path__, 'furnace.runtime.')]")
    proc = run(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_numpy_prediction_is_the_evaluators():
    """furnace.runtime.sliding (numpy) and Evaluator.predict (torch): windows, padding, scales, flip, batches."""
    from easydict import EasyDict

    from furnace.engine.evaluator import Evaluator
    from furnace.runtime.sliding import EvalSettings, predict_logits

    torch.manual_seed(0)
    net = spread_bn(DeepLabV3Plus.from_arch("resnet18", 5, width_mult=0.25, head_channels=32)).eval()
    image = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    settings = EvalSettings(crop=32, scales=(0.75, 1.25), flip=True, batch=3)
    cfg = EasyDict(num_classes=5, eval_crop=32, eval_scales=[0.75, 1.25], eval_flip=True, eval_batch=3)
    ref = Evaluator(cfg, "cpu", class_names=list("abcde"), palette=np.zeros((5, 3))).predict(net, image).numpy()

    def network(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    ours = predict_logits(network, image, 5, settings)
    assert ours.shape == ref.shape == (5, 45, 70)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    assert not np.allclose(ours, predict_logits(network, image, 5, EvalSettings(32, (0.75, 1.25), False, 3)))


def test_calibration_crops_are_the_inputs_evaluation_feeds(tmp_path):
    """With enough crops, the calibration reader yields exactly the windows Evaluator.predict passes to the network."""
    from easydict import EasyDict

    from furnace.engine.evaluator import Evaluator
    from furnace.runtime.sliding import EvalSettings
    from furnace.tools.quantize import CalibrationWindows, calibration_images

    write_images(tmp_path / "calib", 2, size=(40, 56))
    seen = []

    def recorder(x):
        seen.extend(x.numpy())
        return torch.zeros((x.shape[0], 3, *x.shape[-2:]))

    cfg = EasyDict(num_classes=3, eval_crop=32, eval_scales=[0.5, 1.0], eval_flip=True, eval_batch=8)
    evaluator = Evaluator(cfg, "cpu", class_names=list("abc"), palette=np.zeros((3, 3)))
    images = calibration_images([tmp_path / "calib"], limit=10)
    for path, _ in images:
        evaluator.predict(recorder, cv2.imread(str(path))[..., ::-1].copy())
    reader = CalibrationWindows(images, EvalSettings(crop=32, scales=(0.5, 1.0), flip=True), crops=1000)
    crops = [item["image"][0] for item in iter(reader.get_next, None)]
    assert len(crops) == len(reader) == len(seen) == 2 * (1 + 2 * 3) * 2  # images x (windows at 0.5 + at 1) x flip
    assert all(c.shape == (3, 32, 32) for c in crops)
    assert sorted(c.tobytes() for c in crops) == sorted(s.tobytes() for s in seen)
    few = CalibrationWindows(images, EvalSettings(crop=32, scales=(0.5, 1.0), flip=True), crops=5)
    assert len(few) == 5 and len({id(i[0]) for i in few.items}) == 2  # spread over both images


def test_int8_export_reports_latency_and_agreement_and_keeps_the_metadata(tmp_path, capsys):
    from furnace.tools import export

    ck = tmp_path / "s.pth"
    tiny_student(ck)
    write_images(tmp_path / "calib", 3)
    (tmp_path / "calib" / "broken.png").write_bytes(b"not an image")  # named and skipped
    code = export.main([str(ck), "--out", str(tmp_path / "s.int8.onnx"), "--int8", "--calib", str(tmp_path / "calib"),
                        "--calib-crops", "4", "--check-sizes", "1x32x32", "--latency-sizes", "32x48", "--runs", "1",
                        "--threads", "1", "--fp32-nodes", "/classifier/*"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "broken.png: image cannot be decoded" in out.err
    report = json.loads(out.out)
    assert report["onnx"] == str(tmp_path / "s.onnx")  # the fp32 file: OUT without .int8
    int8 = report["int8"]
    assert int8["onnx"] == str(tmp_path / "s.int8.onnx") and int8["calib_images"] == 3 and int8["calib_crops"] == 4
    assert (int8["method"], int8["types"], int8["reduce_range"]) == ("minmax", "u8s8", True)
    assert int8["nodes_kept_fp32"] == 1 and 0.9 <= int8["argmax_agreement"] <= 1.0
    (lat,) = report["latency"]
    assert lat["onnxruntime_int8_ms"] > 0 and lat["int8_speedup"] == pytest.approx(
        lat["onnxruntime_ms"] / lat["onnxruntime_int8_ms"], rel=0.05)
    model = onnx.load(str(tmp_path / "s.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "Conv" in ops
    classifier = [n for n in model.graph.node if n.name.startswith("/classifier/")]
    assert classifier and all(n.op_type == "Conv" for n in classifier)  # kept fp32: no QDQ pair feeds it a scale
    meta = OrtNetwork(tmp_path / "s.int8.onnx").meta
    assert meta["num_classes"] == 7 and meta["dataset"] == "synthetic" and meta["int8"]["fp32_nodes"] == ["/classifier/*"]


def test_int8_report_on_stdout_stays_json_with_a_histogram_calibrator(tmp_path, capsys):
    """ONNX Runtime's histogram calibrators print progress lines; they go to stderr, not into the report."""
    from furnace.tools import export

    ck = tmp_path / "s.pth"
    tiny_student(ck)
    write_images(tmp_path / "calib", 1)
    code = export.main([str(ck), "--out", str(tmp_path / "s.int8.onnx"), "--int8", "--calib", str(tmp_path / "calib"),
                        "--calib-crops", "2", "--calib-method", "percentile", "--no-reduce-range",
                        "--check-sizes", "1x32x32", "--no-latency"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    int8 = json.loads(out.out)["int8"]
    assert (int8["method"], int8["reduce_range"], int8["calib_crops"]) == ("percentile", False, 2)


def test_int8_options_are_checked_before_any_work(tmp_path, capsys):
    from furnace.tools import export

    ck = tmp_path / "s.pth"
    tiny_student(ck)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    cases = [([], "--int8 needs --calib INPUT"),
             (["--calib", str(tmp_path / "junk")], "none of the 1 file(s) is a readable image"),
             (["--calib", str(tmp_path / "empty_dir_missing")], "empty_dir_missing: --calib INPUT not found")]
    for extra, message in cases:
        assert export.main([str(ck), "--out", str(tmp_path / "x.int8.onnx"), "--int8", *extra]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], lines
        assert not list(tmp_path.glob("*.onnx"))


def test_a_failed_export_leaves_the_files_already_there(tmp_path, capsys):
    """Options are checked before any work, and files are replaced only once every check passed: a pattern that
    matches no node (found after the export) leaves the previous fp32 / INT8 pair as it was."""
    from furnace.tools import export

    ck = tmp_path / "s.pth"
    tiny_student(ck)
    before = ck.read_bytes()
    write_images(tmp_path / "calib", 1)
    for extra, message in [(["--out", ck], "s.pth: the file to write must be named *.onnx"),
                           (["--out", tmp_path / "a.onnx", "--latency-sizes", "512"], "size '512' is not HxW"),
                           (["--out", tmp_path / "a.onnx", "--check-sizes", "0x32x32"], "0x32x32: the batch")]:
        code, _, err = call(export.main, [ck, *extra], capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (extra, err)
    assert ck.read_bytes() == before and not list(tmp_path.glob("*.onnx"))
    pair = {tmp_path / "s.onnx": b"earlier fp32", tmp_path / "s.int8.onnx": b"earlier int8"}
    for path, data in pair.items():
        path.write_bytes(data)
    code, _, err = call(export.main, [ck, "--out", tmp_path / "s.int8.onnx", "--int8", "--calib", tmp_path / "calib",
                                      "--calib-crops", "1", "--check-sizes", "1x32x32", "--no-latency",
                                      "--fp32-nodes", "typo*"], capsys)
    assert code == 2 and "--fp32-nodes 'typo*': matches no node" in err, err
    assert {p: p.read_bytes() for p in pair} == pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "s.int8.onnx", "s.onnx", "s.pth"]  # no leftovers


@pytest.fixture(scope="module")
def synthetic_experiment(tmp_path_factory):
    """A tiny synthetic dataset, the ResNet-18 MGD experiment's config on it, and a snapshot of a random student."""
    import runpy

    from furnace.config import apply_overrides
    from furnace.datasets.make_synthetic import generate

    root = tmp_path_factory.mktemp("synexp")
    generate(root / "DATA" / "synthetic", seed=0, num_train=16, num_val=6, size=32, ratios=(8,))
    cfg = runpy.run_path(str(REPO / "exp.synthetic" / "syn8.resnet18_deeplabv3plus" / "config.py"))["config"]
    cfg = apply_overrides(cfg, [f"data_root={root / 'DATA'}", f"output_dir={root / 'out'}", "eval_crop=32",
                                "eval_flip=true", "num_workers=0", "check_data=false"])
    snapshot = root / "out" / "checkpoints" / "epoch-1.pth"
    snapshot.parent.mkdir(parents=True)
    tiny_student(snapshot, arch="resnet18", eval_record={"crop": 32, "scales": [1.0], "flip": True})
    return cfg, snapshot


def test_eval_py_evaluates_an_exported_file_like_its_snapshot(synthetic_experiment, tmp_path, capsys):
    from furnace.run import eval_main
    from furnace.tools import export

    cfg, snapshot = synthetic_experiment
    onnx_path = tmp_path / "student.onnx"
    assert export.main([str(snapshot), "--out", str(onnx_path), "--check-sizes", "1x32x32", "--no-latency"]) == 0
    torch_res = eval_main(cfg, ["-e", "last"])["results"]["epoch-1.pth"]
    onnx_res = eval_main(cfg, ["-e", str(onnx_path)])["results"]["student.onnx"]
    assert torch_res["miou"] > 0 and onnx_res["miou"] == pytest.approx(torch_res["miou"], abs=5e-5)
    assert onnx_res["pixel_acc"] == pytest.approx(torch_res["pixel_acc"], abs=5e-5) and onnx_res["epoch"] is None
    stored = json.loads((snapshot.parent / "eval_results.json").read_text())["results"]
    assert set(stored) >= {"epoch-1.pth", "student.onnx"} and stored["student.onnx"]["path"] == str(onnx_path)
    assert "student.onnx: mIoU" in capsys.readouterr().out
    # two stages' student.onnx in one -e list: each its own entry, named by its path
    other = tmp_path / "other" / "student.onnx"
    tiny_student(tmp_path / "other.pth", arch="resnet18", seed=1, eval_record={"crop": 32, "scales": [1.0], "flip": True})
    assert export.main([str(tmp_path / "other.pth"), "--out", str(other), "--check-sizes", "1x32x32", "--no-latency"]) == 0
    both = eval_main(cfg, ["-e", f"{onnx_path},{other}"])["results"]
    assert set(both) == {str(onnx_path), str(other)} and both[str(onnx_path)]["miou"] == onnx_res["miou"]
    assert both[str(other)]["miou"] != onnx_res["miou"]
    mixed = eval_main(cfg, ["-e", f"last,{other}"])  # last and best are the snapshots'; the file is listed beside
    assert (mixed["last"], mixed["best"]) == ("epoch-1.pth", "epoch-1.pth") and set(mixed["results"]) == {
        "epoch-1.pth", "student.onnx"}


def test_eval_py_refuses_an_onnx_file_of_another_class_count_or_not_onnx(synthetic_experiment, tmp_path, capsys):
    from furnace.run import eval_main

    cfg, _ = synthetic_experiment
    net = tiny_student(tmp_path / "city.pth", num_classes=19, dataset="cityscapes")
    export_onnx(net, tmp_path / "city.onnx", onnx_meta(net, {"num_classes": 19}))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    cases = [("city.onnx", "city.onnx: the ONNX file predicts 19 classes but the config has num_classes=7; export"),
             ("junk.onnx", "junk.onnx: not an ONNX model ONNX Runtime can load")]
    for name, message in cases:
        with pytest.raises(SystemExit) as exc:
            eval_main(cfg, ["-e", str(tmp_path / name)])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert exc.value.code == 2 and len(lines) == 1 and message in lines[0], lines
        assert "furnace.tools.export" in lines[0]
    proc = run(["-c", TORCH_BLOCKED.format("furnace.runtime.predict"), tmp_path / "junk.onnx", tmp_path / "x.png",
                "--out", tmp_path / "o"])
    assert proc.returncode == 2 and "junk.onnx: not an ONNX model ONNX Runtime can load" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not CITY_SAMPLE.is_dir(), reason="../shared/data/cityscapes_sample is not present")
def test_torch_free_predictor_matches_tools_predict_at_full_resolution(tmp_path):
    """furnace.runtime.predict, with `import torch` failing, writes the index maps furnace.tools.predict --onnx
    writes, on a 2048x1024 Cityscapes image (8 windows of 800, scales 0.75 and 1, flip)."""
    image = sorted((CITY_SAMPLE / "leftImg8bit").rglob("*_leftImg8bit.png"))[0]
    small = cv2.resize(cv2.imread(str(image))[..., ::-1], (512, 256), interpolation=cv2.INTER_AREA)
    net = tiny_student(tmp_path / "city.pth", num_classes=19, dataset="cityscapes",
                       eval_record={"crop": 800, "scales": [0.75, 1.0], "flip": True}, image=small)
    meta = onnx_meta(net, read_segmentor_meta(tmp_path / "city.pth"))
    export_onnx(net, tmp_path / "city.onnx", meta)
    ours, theirs = tmp_path / "runtime", tmp_path / "tools"
    proc = run(["-c", TORCH_BLOCKED.format("furnace.runtime.predict"), tmp_path / "city.onnx", image, "--out", ours])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(["-m", "furnace.tools.predict", tmp_path / "city.onnx", image, "--out", theirs])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (cv2.imread(str(d / "index" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED) for d in (ours, theirs))
    assert a.shape == (1024, 2048) and len(np.unique(a)) > 3
    assert (a == b).mean() >= 0.999
    palette = np.array(CITY_COLORS, np.uint8)
    color = cv2.imread(str(ours / "color" / f"{image.stem}.png"))[..., ::-1]
    assert (color == palette[a]).all()
    assert cv2.imread(str(ours / "overlay" / f"{image.stem}.png")).shape == (1024, 2048, 3)
