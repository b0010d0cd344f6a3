"""Training data-loading throughput: how many training samples per second a loader worker makes.

    python -m furnace.tools.bench_data [--workers 1 2] [--crop 512] [--images 48] [--repeats 5]

Writes VOC-layout 500x375 JPEG images with index-PNG labels (the synthetic generator at VOC size) into
a temporary folder, runs :class:`furnace.datasets.TrainLoader` on them and prints JSON. A
"semi-supervised sample" is one global sample position: a labeled crop with its label, two unlabeled
crops and a CutMix mask (what CPS and MGD consume); "labeled-only" is what the supervised baseline
consumes.

In the same run it measures the decode floor: the same files the loader reads for those samples
(JPEG images, PNG labels), read and decoded with ``cv2.imdecode`` and nothing else, in this process.
``ratio_to_decode_floor`` is the loader's samples/s per worker over the floor's samples/s: 1.0 would
mean augmentation, checks, batching and the worker hand-over cost nothing. With ``--repeats`` each
number is the median of that many measurements (the ratio is taken from the medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch


def measure_loader(cfg, *, num_batches: int = 12, warmup: int = 2, need_unlabeled: bool = True) -> dict:
    """Time ``num_batches`` micro-batches of epoch 0 of ``TrainLoader(cfg)`` after ``warmup`` ones.

    ``cfg`` is a resolved config (``num_workers``, ``crop_size``, ``micro_batch`` are used as set).
    Returns ``{"samples_per_s", "samples_per_s_per_worker", "num_workers", "micro_batch", "crop_size",
    "need_unlabeled", "batches", "seconds"}``; per worker divides by max(1, num_workers).
    """
    from furnace.datasets import TrainLoader

    loader = TrainLoader(cfg, need_unlabeled=need_unlabeled)
    if len(loader) < warmup + num_batches:
        # Within one epoch only: a new epoch starts new worker processes, which is not throughput.
        raise ValueError(
            f"an epoch has {len(loader)} micro-batches; need warmup + num_batches = {warmup + num_batches}"
        )
    iterator = iter(loader.epoch(0))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    measured = num_batches
    samples_per_s = measured * loader.micro_batch / seconds
    workers = int(cfg.num_workers)
    return {
        "samples_per_s": round(samples_per_s, 2),
        "samples_per_s_per_worker": round(samples_per_s / max(1, workers), 2),
        "num_workers": workers,
        "micro_batch": loader.micro_batch,
        "crop_size": int(cfg.crop_size),
        "need_unlabeled": need_unlabeled,
        "batches": measured,
        "seconds": round(seconds, 3),
    }


def _sample_files(loader, positions, need_unlabeled: bool) -> list[list]:
    """Per global sample position, the files the loader reads for it (labeled image and label, plus
    the two unlabeled images when ``need_unlabeled``)."""
    from furnace.datasets.loader import STREAM_LABELED, STREAM_U0, STREAM_U1

    orders = loader.orders(0)
    files = []
    for p in positions:
        image, label, _ = loader.labeled.files(int(orders[STREAM_LABELED][p]))
        sample = [(image, cv2.IMREAD_COLOR), (label, cv2.IMREAD_UNCHANGED)]
        if need_unlabeled:
            for stream in (STREAM_U0, STREAM_U1):
                sample.append((loader.unlabeled.files(int(orders[stream][p]))[0], cv2.IMREAD_COLOR))
        files.append(sample)
    return files


def measure_decode_floor(cfg, *, num_samples: int, need_unlabeled: bool = True) -> dict:
    """Samples/s of reading and decoding (cv2 only) the files of the first ``num_samples`` sample
    positions of epoch 0, in this process: the floor a loader worker cannot beat."""
    from furnace.datasets import TrainLoader

    loader = TrainLoader(cfg, need_unlabeled=need_unlabeled)
    files = _sample_files(loader, range(num_samples), need_unlabeled)
    start = time.perf_counter()
    for sample in files:
        for path, flags in sample:
            if cv2.imdecode(np.fromfile(str(path), np.uint8), flags) is None:
                raise RuntimeError(f"{path}: cannot be decoded")
    seconds = time.perf_counter() - start
    return {"samples_per_s": round(num_samples / seconds, 2), "samples": num_samples, "seconds": round(seconds, 3)}


def _median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def measure_with_floor(cfg, *, num_batches: int, repeats: int, need_unlabeled: bool) -> dict:
    """:func:`measure_loader` and :func:`measure_decode_floor` ``repeats`` times each (interleaved, so
    both see the same machine load); medians and the loader-per-worker / floor ratio."""
    loader_runs, floor_runs = [], []
    samples = num_batches * int(cfg.micro_batch)
    for _ in range(repeats):
        loader_runs.append(measure_loader(cfg, num_batches=num_batches, need_unlabeled=need_unlabeled))
        floor_runs.append(measure_decode_floor(cfg, num_samples=samples, need_unlabeled=need_unlabeled))
    result = dict(loader_runs[-1])
    result["samples_per_s"] = _median_of(loader_runs, "samples_per_s")
    result["samples_per_s_per_worker"] = _median_of(loader_runs, "samples_per_s_per_worker")
    result["decode_floor_samples_per_s"] = _median_of(floor_runs, "samples_per_s")
    result["ratio_to_decode_floor"] = round(result["samples_per_s_per_worker"] / result["decode_floor_samples_per_s"], 3)
    result["repeats"] = repeats
    result["runs_samples_per_s_per_worker"] = [r["samples_per_s_per_worker"] for r in loader_runs]
    result["runs_decode_floor"] = [r["samples_per_s"] for r in floor_runs]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m furnace.tools.bench_data",
        description="Measure training samples/second per data-loader worker on 500x375 VOC-layout JPEGs (JSON output).",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="num_workers values to measure (default 1)")
    parser.add_argument("--crop", type=int, default=512, help="crop size (default 512, the VOC recipe)")
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per micro-batch (default 4)")
    parser.add_argument("--batches", type=int, default=12, help="micro-batches timed per measurement (default 12)")
    parser.add_argument(
        "--images",
        type=int,
        default=64,
        help="training images to generate (default 64; at least (2 + batches) x micro-batch)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="measurements per setting; medians are reported (default 1)")
    args = parser.parse_args(argv)

    import furnace.methods  # noqa: F401 (registers the methods a config may name)
    from furnace.config import prepare, voc_config
    from furnace.datasets.make_synthetic import generate

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        generate(os.path.join(tmp, "pascal_voc"), seed=0, num_train=args.images, num_val=1, size=(375, 500), ratios=())
        for workers in args.workers:
            cfg = voc_config()
            cfg.update(
                data_root=tmp,
                labeled_ratio=1,
                epochs=1,
                crop_size=args.crop,
                num_workers=workers,
                global_batch=args.micro_batch,
                micro_batch=args.micro_batch,
                pretrained="",
            )
            cfg = prepare(cfg)
            for need_unlabeled in (True, False):
                results.append(measure_with_floor(cfg, num_batches=args.batches, repeats=max(1, args.repeats),
                                                  need_unlabeled=need_unlabeled))
    print(json.dumps({"image_size": "500x375", "cpu_count": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
