"""Training data-loading throughput: samples per second per loader worker, against the decode floor.

    python -m furnace.tools.bench_data [--workers 1 2] [--crop 512] [--images 64] [--repeats 5]

Prints JSON for :class:`furnace.datasets.TrainLoader` on generated 500x375 VOC-layout JPEGs, semi-supervised
samples (what CPS and MGD consume) and labeled-only ones; ``ratio_to_decode_floor`` is the loader's rate per
worker over that of decoding the same files with cv2 alone.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

import cv2
import numpy as np
import torch


@contextmanager
def voc_loader_configs(workers, *, crop: int, micro_batch: int, images: int):
    """Prepared VOC configs, one per ``workers`` value, over ``images`` generated 500x375 training images (all
    labeled and unlabeled) in a temporary folder."""
    import furnace.methods  # noqa: F401 (registers the methods a config may name)
    from furnace.config import prepare, voc_config
    from furnace.datasets.make_synthetic import generate
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        generate(os.path.join(tmp, "pascal_voc"), seed=0, num_train=images, num_val=1, size=(375, 500), ratios=())
        configs = []
        for n in workers:
            cfg = voc_config()
            cfg.update(data_root=tmp, labeled_ratio=1, epochs=1, crop_size=crop, num_workers=n,
                       global_batch=micro_batch, micro_batch=micro_batch, pretrained="")
            configs.append(prepare(cfg))
        yield configs


def measure_loader(cfg, *, num_batches: int = 12, warmup: int = 2, need_unlabeled: bool = True) -> dict:
    """Time ``num_batches`` micro-batches of epoch 0 of ``TrainLoader(cfg)`` (a resolved config) after ``warmup``:
    ``{"samples_per_s", "samples_per_s_per_worker" (over max(1, num_workers)), "num_workers", "micro_batch",
    "crop_size", "need_unlabeled", "batches", "seconds"}``."""
    from furnace.datasets import TrainLoader
    loader = TrainLoader(cfg, need_unlabeled=need_unlabeled)
    if len(loader) < warmup + num_batches:
        # within one epoch only: a new epoch starts new worker processes, which is not throughput
        raise ValueError(f"an epoch has {len(loader)} micro-batches; "
                         f"need warmup + num_batches = {warmup + num_batches}")
    iterator = iter(loader.epoch(0))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    seconds = time.perf_counter() - start
    samples_per_s = num_batches * loader.micro_batch / seconds
    workers = int(cfg.num_workers)
    return {"samples_per_s": round(samples_per_s, 2),
            "samples_per_s_per_worker": round(samples_per_s / max(1, workers), 2), "num_workers": workers,
            "micro_batch": loader.micro_batch, "crop_size": int(cfg.crop_size), "need_unlabeled": need_unlabeled,
            "batches": num_batches, "seconds": round(seconds, 3)}


def measure_decode_floor(cfg, *, num_samples: int, need_unlabeled: bool = True) -> dict:
    """Samples/s of reading and decoding (cv2 only, in this process) the files of the first ``num_samples``
    sample positions of epoch 0: the floor a loader worker cannot beat."""
    from furnace.datasets import TrainLoader
    from furnace.datasets.loader import STREAM_LABELED, STREAM_U0, STREAM_U1
    loader = TrainLoader(cfg, need_unlabeled=need_unlabeled)
    orders = loader.orders(0)
    files = []
    for p in range(num_samples):
        image, label, _ = loader.labeled.files(int(orders[STREAM_LABELED][p]))
        files += [(image, cv2.IMREAD_COLOR), (label, cv2.IMREAD_UNCHANGED)]
        if need_unlabeled:
            files += [(loader.unlabeled.files(int(orders[s][p]))[0], cv2.IMREAD_COLOR) for s in (STREAM_U0, STREAM_U1)]
    start = time.perf_counter()
    for path, flags in files:
        if cv2.imdecode(np.fromfile(str(path), np.uint8), flags) is None:
            raise RuntimeError(f"{path}: cannot be decoded")
    seconds = time.perf_counter() - start
    return {"samples_per_s": round(num_samples / seconds, 2), "samples": num_samples, "seconds": round(seconds, 3)}


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def measure_with_floor(cfg, *, num_batches: int, repeats: int, need_unlabeled: bool) -> dict:
    """:func:`measure_loader` and :func:`measure_decode_floor` ``repeats`` times each, interleaved (so both
    see the same machine load): the last loader result with medians and the loader-per-worker / floor ratio."""
    loader_runs, floor_runs = [], []
    for _ in range(repeats):
        loader_runs.append(measure_loader(cfg, num_batches=num_batches, need_unlabeled=need_unlabeled))
        floor_runs.append(measure_decode_floor(cfg, num_samples=num_batches * int(cfg.micro_batch),
                                               need_unlabeled=need_unlabeled))
    per_worker, floor = _median(loader_runs, "samples_per_s_per_worker"), _median(floor_runs, "samples_per_s")
    return {**loader_runs[-1], "samples_per_s": _median(loader_runs, "samples_per_s"),
            "samples_per_s_per_worker": per_worker, "decode_floor_samples_per_s": floor,
            "ratio_to_decode_floor": round(per_worker / floor, 3), "repeats": repeats,
            "runs_samples_per_s_per_worker": [r["samples_per_s_per_worker"] for r in loader_runs],
            "runs_decode_floor": [r["samples_per_s"] for r in floor_runs]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.tools.bench_data", description="Measure training "
                                     "samples/second per data-loader worker on 500x375 VOC-layout JPEGs (JSON output).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="num_workers values to measure (default 1)")
    parser.add_argument("--crop", type=int, default=512, help="crop size (default 512, the VOC recipe)")
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per micro-batch (default 4)")
    parser.add_argument("--batches", type=int, default=12, help="micro-batches timed per measurement (default 12)")
    parser.add_argument("--images", type=int, default=64,
                        help="training images to generate (default 64; at least (2 + batches) x micro-batch)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements per setting; medians are reported (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with voc_loader_configs(args.workers, crop=args.crop, micro_batch=args.micro_batch, images=args.images) as configs:
        results = [measure_with_floor(cfg, num_batches=args.batches, repeats=max(1, args.repeats), need_unlabeled=u)
                   for cfg in configs for u in (True, False)]
    print(json.dumps({"image_size": "500x375", "cpu_count": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
