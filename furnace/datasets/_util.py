"""Helpers of the dataset tools: a process-pool map with a progress bar, PNG writing, conversion errors."""

import functools
import multiprocessing
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from ..utils import UserError

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def progress_map(fn, jobs: list, workers: int = 0, desc: str = "", progress: bool = True) -> list:
    """``[fn(job) for job in jobs]``, over ``workers`` processes when > 0 and worth it (``fn`` module-level)."""
    from tqdm import tqdm

    bar = functools.partial(tqdm, total=len(jobs), desc=desc, unit="file", disable=not progress, file=sys.stderr)
    if workers > 0 and len(jobs) > 32:
        with multiprocessing.Pool(workers) as pool:
            return list(bar(pool.imap(fn, jobs, chunksize=8)))
    return list(bar(map(fn, jobs)))


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W) uint8 array as a single-channel PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise UserError(f"{path}: cannot encode PNG")
    path.write_bytes(data.tobytes())


def raise_conversion_problems(results: list[str], what: str = "samples") -> None:
    """A UserError listing the first 20 problems among ``results`` (one message or '' per sample), if any."""
    problems = [p for p in results if p]
    if problems:
        shown = "\n  - ".join(problems[:20])
        raise UserError(f"{len(problems)} of {len(results)} {what} could not be converted:\n  - {shown}")


def next_step_hint(train_list: Path, subset_dir: Path) -> str:
    """The step after converting a dataset: provide the standard partitions, or make them."""
    return (f"next: put the standard partition lists into {subset_dir}/ or run "
            f"python -m furnace.datasets.make_splits --list {train_list} --out {subset_dir}")
