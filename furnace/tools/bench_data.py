"""Training data-loading throughput: how many training samples per second a loader worker makes.

    python -m furnace.tools.bench_data [--workers 1 2] [--crop 512] [--images 48]

Writes VOC-layout 500x375 JPEG images with index-PNG labels (the synthetic generator at VOC size) into
a temporary folder, runs :class:`furnace.datasets.TrainLoader` on them and prints JSON. A
"semi-supervised sample" is one global sample position: a labeled crop with its label, two unlabeled
crops and a CutMix mask (what CPS and MGD consume); "labeled-only" is what the supervised baseline
consumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

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
    args = parser.parse_args(argv)

    from furnace.config import resolve_config, voc_config
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
            cfg = resolve_config(cfg)
            for need_unlabeled in (True, False):
                results.append(measure_loader(cfg, num_batches=args.batches, need_unlabeled=need_unlabeled))
    print(json.dumps({"image_size": "500x375", "cpu_count": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
