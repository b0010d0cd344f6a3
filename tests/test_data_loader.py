"""TrainLoader: epoch length, oversampling, independent unlabeled streams, sharding, determinism
(num_workers, resume), worker errors; build_val_dataset and check_dataset."""

import shutil

import cv2
import numpy as np
import pytest
import torch

import furnace.methods  # noqa: F401 (registers the methods a config may name)
from furnace.config import prepare, synthetic_config
from furnace.datasets.dataset import read_image
from furnace.datasets import SegDataset, TrainLoader, build_val_dataset, check_dataset
from furnace.datasets import to_device
from furnace.datasets.batch import (BOX_OF, BOXES, IMAGE_L, IMAGE_U0, IMAGE_U1, IMAGES, LABEL_L, LABELED_KEYS,
                                    MASK_MIX, synthetic_batch)
from furnace.datasets.loader import STREAM_LABELED, STREAM_U0, STREAM_U1, _Epoch, sample_rng, stream_order
from furnace.datasets.transforms import train_transform
from furnace.datasets.make_synthetic import generate
from furnace.utils import UserError

N_TRAIN, CROP = 40, 32


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=1, num_train=N_TRAIN, num_val=4, size=CROP, ratios=(4,))
    ids = (root / "synthetic/train_aug.txt").read_text().split()
    (root / "synthetic/lab8.txt").write_text("\n".join(ids[:8]) + "\n")
    (root / "synthetic/unl32.txt").write_text("\n".join(ids[8:]) + "\n")
    return root


def make_cfg(data_root, world_size=1, **overrides):
    C = synthetic_config()
    C.update(
        data_root=str(data_root),
        num_classes=7,
        crop_size=CROP,
        global_batch=4,
        micro_batch=0,
        num_workers=0,
        labeled_list="lab8.txt",
        unlabeled_list="unl32.txt",
        seed=7,
    )
    C.update(overrides)
    return prepare(C, world_size=world_size)


def collect(iterable):
    return [{k: v.clone() for k, v in b.items()} for b in iterable]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_batch_contents(data_root):
    loader = TrainLoader(make_cfg(data_root, micro_batch=2))
    assert (loader.n_labeled, loader.n_unlabeled, loader.iters_per_epoch, loader.accum) == (8, 32, 8, 2)
    assert len(loader) == 16 and len(list(loader.epoch(0))) == 16 and len(list(loader.epoch(0, start_iter=5))) == 6
    batch = next(loader.epoch(0))
    assert set(batch) == {"image_l", "label_l", "image_u0", "image_u1", "mask_mix", "valid_l", "valid_u0", "valid_u1"}
    assert batch["image_l"].shape == batch["image_u0"].shape == batch["image_u1"].shape == (2, 3, CROP, CROP)
    # workers do no float work: uint8 images (a channels-last view), labels and mask
    assert batch["image_l"].dtype == torch.uint8 and batch["label_l"].dtype == torch.uint8
    assert batch["image_l"].is_contiguous(memory_format=torch.channels_last)
    assert batch["mask_mix"].dtype == torch.uint8 and batch["valid_l"].dtype == torch.int32
    assert batch["label_l"].shape == (2, CROP, CROP) and batch["mask_mix"].shape == (2, 1, CROP, CROP)
    assert batch["valid_l"].shape == (2, 4)
    assert set(batch["label_l"].unique().tolist()) <= set(range(7)) | {255}
    assert set(batch["mask_mix"].unique().tolist()) <= {0, 1}
    moved = to_device(batch, "cpu")
    assert set(moved) == {"image_l", "label_l", "image_u0", "image_u1", "mask_mix"}
    assert moved["image_l"].dtype == torch.float32 and moved["label_l"].dtype == torch.int64
    assert moved["mask_mix"].dtype == torch.float32 and moved["image_l"].is_contiguous()
    assert moved["image_l"].abs().max() < 3.0  # normalised, not 0..255


def _layout(batch):
    """What a batch's format is made of: per key the shape, dtype and strides (channels-last views)."""
    return {k: (tuple(v.shape), v.dtype, v.stride()) for k, v in batch.items()}


@pytest.mark.parametrize("need_unlabeled", [True, False])
def test_synthetic_batch_has_the_loaders_exact_format(data_root, need_unlabeled):
    """The benchmark's and the tests' stand-in batch: the keys, shapes, dtypes and strides of a real one."""
    real = next(iter(TrainLoader(make_cfg(data_root, micro_batch=2), need_unlabeled=need_unlabeled).epoch(0)))
    fake = synthetic_batch(2, CROP, 7, unlabeled=need_unlabeled)
    assert _layout(fake) == _layout(real)
    assert set(real) == set(LABELED_KEYS) | ({IMAGE_U0, IMAGE_U1, MASK_MIX, *BOXES} if need_unlabeled else set())
    assert set(fake[LABEL_L].unique().tolist()) <= set(range(7))
    assert all(torch.equal(fake[BOX_OF[k]], torch.tensor([[0, 0, CROP, CROP]] * 2, dtype=torch.int32))
               for k in IMAGES if k in fake)
    if need_unlabeled:
        assert fake[MASK_MIX].float().mean() == 0.25  # the central box, a quarter of the area
    assert torch.equal(synthetic_batch(2, CROP, 7)[IMAGE_L], synthetic_batch(2, CROP, 7)[IMAGE_L])  # fixed


def test_device_normalisation_is_bit_identical_to_the_cpu_transform(data_root):
    """uint8 loader + to_device == the all-CPU float transform (normalise, then pad with 0)."""
    cfg = make_cfg(data_root, micro_batch=4, train_scales=[0.5, 0.75, 1.0, 1.5])
    loader = TrainLoader(cfg)
    batches = _Epoch(loader, 0)
    padded = 0
    for k in range(4):
        raw = batches[k]
        moved = to_device(raw, "cpu")
        for name, dataset, stream in (("l", loader.labeled, STREAM_LABELED), ("u0", loader.unlabeled, STREAM_U0)):
            for i, p in enumerate(loader.positions(k)):
                sample = dataset[int(batches.orders[stream][p])]
                rng = sample_rng(cfg.seed, 0, p, stream)
                want, want_label = train_transform(sample["image"], sample.get("label"), rng, crop_size=CROP,
                                                   scales=cfg.train_scales)
                assert torch.equal(moved["image_" + name][i], torch.from_numpy(want).permute(2, 0, 1))
                if name == "l":
                    assert torch.equal(moved["label_l"][i], torch.from_numpy(want_label).long())
                padded += int((raw["valid_" + name][i] != torch.tensor([0, 0, CROP, CROP])).any())
    assert padded > 0  # scale 0.5 of 32 px images pads: the zeroing outside the box was exercised


def test_epoch_length_and_oversampling(data_root):
    loader = TrainLoader(make_cfg(data_root))
    orders = loader.orders(0)
    # 32 positions per epoch: every labeled index 4 times, every unlabeled index once per stream
    assert np.bincount(orders[STREAM_LABELED], minlength=8).tolist() == [4] * 8
    for stream in (STREAM_U0, STREAM_U1):
        assert sorted(orders[stream].tolist()) == list(range(32))
    assert not np.array_equal(orders[STREAM_U0], orders[STREAM_U1])  # independent shuffles
    nxt = loader.orders(1)
    assert not np.array_equal(orders[STREAM_U0], nxt[STREAM_U0])  # re-drawn every epoch
    # repeat + random tail: 30 = 4 x 7 + 2 distinct extra indices
    order = stream_order(7, 30, seed=0, epoch=0, stream=0)
    counts = np.bincount(order, minlength=7)
    assert sorted(counts.tolist()) == [4] * 5 + [5] * 2
    tails = {tuple(np.flatnonzero(np.bincount(stream_order(7, 30, 0, e, 0), minlength=7) == 5)) for e in range(20)}
    assert len(tails) > 3  # the tail is drawn per epoch
    # the standard 1/4 split: 10 labeled, 30 unlabeled -> 30 // 4 = 7 iterations
    assert TrainLoader(make_cfg(data_root, labeled_list="", unlabeled_list="", labeled_ratio=4)).iters_per_epoch == 7


def test_unlabeled_streams_differ_in_the_batches(data_root):
    loader = TrainLoader(make_cfg(data_root))
    for batch in loader.epoch(0):
        for i in range(4):
            assert not torch.equal(batch["image_u0"][i], batch["image_u1"][i])


def test_sharding_over_two_ranks_covers_each_global_batch_once(data_root):
    single = collect(TrainLoader(make_cfg(data_root)).epoch(2))  # one process, micro-batch 4
    ranks = [TrainLoader(make_cfg(data_root, world_size=2, micro_batch=1), rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].accum == 2 and ranks[0].iters_per_epoch == 8
    per_rank = [collect(loader.epoch(2)) for loader in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == 16
    for it, full in enumerate(single):
        parts = [per_rank[r][it * 2 + j] for r in (0, 1) for j in (0, 1)]  # rank-major, then micro-batch
        for key in full:
            assert torch.equal(torch.cat([p[key] for p in parts]), full[key]), (it, key)
    for it in range(8):
        positions = [p for r in (0, 1) for j in (0, 1) for p in ranks[r].positions(it * 2 + j)]
        assert positions == list(range(it * 4, it * 4 + 4))


def test_same_data_with_0_or_2_workers(data_root):
    a = collect(TrainLoader(make_cfg(data_root, num_workers=0)).epoch(3))
    b = collect(TrainLoader(make_cfg(data_root, num_workers=2)).epoch(3))
    assert_same_batches(a, b)
    masks = torch.cat([x["mask_mix"] for x in a])
    assert len({m.numpy().tobytes() for m in masks}) == len(masks)  # every sample has its own mask
    other_epoch = collect(TrainLoader(make_cfg(data_root)).epoch(4))
    assert not torch.equal(masks, torch.cat([x["mask_mix"] for x in other_epoch]))


def test_resume_skips_without_loading(data_root, monkeypatch):
    cfg = make_cfg(data_root, micro_batch=2)
    full = collect(TrainLoader(cfg).epoch(1))
    calls = []
    original = SegDataset.__getitem__
    monkeypatch.setattr(SegDataset, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    resumed = collect(TrainLoader(cfg).epoch(1, start_iter=5))
    assert_same_batches(resumed, full[5 * 2 :])
    assert len(calls) == (8 - 5) * 4 * 3  # 3 remaining iterations x 4 samples x (labeled, u0, u1)


def test_labeled_only(data_root):
    cfg = make_cfg(data_root)
    semi, sup = TrainLoader(cfg), TrainLoader(cfg, need_unlabeled=False)
    assert sup.iters_per_epoch == semi.iters_per_epoch == 8
    a, b = collect(sup.epoch(0)), collect(semi.epoch(0))
    assert set(a[0]) == {"image_l", "label_l", "valid_l"}
    for x, y in zip(a, b):
        assert torch.equal(x["image_l"], y["image_l"]) and torch.equal(x["label_l"], y["label_l"])


def test_error_in_worker_reaches_caller_with_file_named(data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    first = (root / "synthetic/lab8.txt").read_text().split()[3]
    bad = root / "synthetic/train_aug/image" / f"{first}.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(UserError) as err:
        for _ in TrainLoader(make_cfg(root, num_workers=2)).epoch(0):
            pass
    message = str(err.value)
    assert message.startswith(str(bad)) and "truncated" in message and "Traceback" not in message


def test_too_little_data_is_a_user_error(data_root):
    with pytest.raises(UserError, match="no full global batch"):
        TrainLoader(make_cfg(data_root, global_batch=64))


def test_val_dataset_and_check_dataset(data_root, tmp_path):
    cfg = make_cfg(data_root)
    val = build_val_dataset(cfg)
    assert len(val) == 4 and val.split == "val" and val[0]["label"].shape == (CROP, CROP)
    report = check_dataset(cfg)
    assert report.ok and report.samples_read > 0
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    ids = (root / "synthetic/lab8.txt").read_text().split()
    (root / "synthetic/train_aug/label" / f"{ids[2]}.png").unlink()
    (root / "synthetic/val/image/val_00001.jpg").unlink()
    with pytest.raises(UserError) as err:
        check_dataset(make_cfg(root))
    assert f"{ids[2]}.png: label file not found" in str(err.value) and "val_00001.jpg" in str(err.value)
    with pytest.raises(UserError, match="num_classes=21"):
        check_dataset(make_cfg(data_root, num_classes=21))


def _exif_app1(orientation: int | None = None, thumbnail: bytes = b"") -> bytes:
    """An APP1 EXIF segment: IFD0 with the orientation tag (0x0112) when given, and with a ``thumbnail`` JPEG an
    IFD1 that points at it (0x0201 offset, 0x0202 length), as cameras and phones write them."""
    import struct

    entries = [struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)] if orientation is not None else []
    ifd1_at = 8 + 2 + 12 * len(entries) + 4
    ifd0 = struct.pack(">H", len(entries)) + b"".join(entries) + struct.pack(">I", ifd1_at if thumbnail else 0)
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + ifd0
    if thumbnail:
        thumb_at = ifd1_at + 2 + 2 * 12 + 4
        tiff += (struct.pack(">H", 2) + struct.pack(">HHII", 0x0201, 4, 1, thumb_at)
                 + struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail)) + b"\x00" * 4 + thumbnail)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _jpeg(image_bgr, app1: bytes = b"") -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    data = encoded.tobytes()
    return data[:2] + app1 + data[2:]


def _jpeg_with_exif_orientation(path, image_bgr, orientation):
    """Write ``image_bgr`` as a JPEG whose APP1 segment carries the EXIF orientation tag (0x0112)."""
    path.write_bytes(_jpeg(image_bgr, _exif_app1(orientation)))


def test_read_image_applies_exif_orientation_as_cv2_imread(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise): the original's cv2.imread(path, IMREAD_COLOR) turns
    the stored 20x30 image into 30x20; read_image gives the same pixels, in RGB."""
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:5, :10] = (0, 0, 255)  # red block top-left (BGR)
    stored[:, 24:] = (255, 0, 0)  # blue band on the right
    path = tmp_path / "rotated.jpg"
    _jpeg_with_exif_orientation(path, stored, 6)
    ours = read_image(path)
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert ours.shape == original.shape == (30, 20, 3)
    assert np.array_equal(ours, cv2.cvtColor(original, cv2.COLOR_BGR2RGB))
    upright = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert np.array_equal(original, np.rot90(upright, -1))  # clockwise: the top-left block is now top-right
    assert (ours[:8, -3:, 0] > 200).all() and (ours[:8, -3:, 2] < 60).all()


def test_a_jpeg_trailer_is_accepted_and_a_cut_jpeg_is_named(tmp_path):
    """Phones append data after the end-of-image marker: the pixels are those without it. A JPEG cut short is
    refused by name, also when its EXIF thumbnail (inside APP1) brings an end-of-image marker of its own."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), (0, 0), 2)
    whole = _jpeg(image)
    plain, trailer = tmp_path / "plain.jpg", tmp_path / "IMG_0001.JPG"
    plain.write_bytes(whole)
    trailer.write_bytes(whole + bytes(range(256)) * 8)  # 2 KiB
    assert np.array_equal(read_image(trailer), read_image(plain))
    thumbnail = _jpeg(cv2.resize(image, (16, 12)))
    for name, data in (("half.jpg", whole), ("thumb.jpg", _jpeg(image, _exif_app1(1, thumbnail)))):
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2 + (len(thumbnail) if name == "thumb.jpg" else 0)])
        with pytest.raises(UserError, match=f"{path}: JPEG image is truncated \\(no end-of-image marker\\); re-copy"):
            read_image(path)
    assert cv2.imdecode(np.frombuffer(_jpeg(image, _exif_app1(1, thumbnail)), np.uint8), cv2.IMREAD_COLOR).shape \
        == (64, 96, 3)  # the EXIF segment is well-formed: the whole file decodes
