"""Command lines of the experiment folders: ``train.py`` and ``eval.py`` are three lines calling these.

    python train.py [--resume auto|PATH] [KEY=VALUE ...]
    python eval.py  [-e 20-33 | -e last | -e all | -e PATH] [--save-pred DIR] [KEY=VALUE ...]

Both also run under ``torchrun`` (training splits the global batch, evaluation shards the val list).
A UserError anywhere prints ``error: <message>`` on stderr and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import re
import sys
from pathlib import Path

import torch

from ..config import apply_overrides, resolve_config
from ..utils import UserError
from . import checkpoint as ckpt
from . import dist
from .evaluator import Evaluator, format_results
from .trainer import train


@contextlib.contextmanager
def user_errors():
    """Turn a UserError into ``error: <message>`` on stderr and exit status 2 (Ctrl-C: status 130)."""
    try:
        yield
    except UserError as err:
        prefix = f"[rank {dist.get_rank()}] " if dist.get_world_size() > 1 else ""
        print(f"{prefix}error: {err}", file=sys.stderr, flush=True)
        dist.cleanup()
        sys.exit(2)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr, flush=True)
        sys.exit(130)


def _parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(sys.argv[0]).name or "furnace", description=description)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config value, e.g. lr=0.01")
    return p


def train_main(config, argv=None, **train_kwargs) -> dict:
    """Entry point of an experiment's ``train.py``: parse ``argv`` (default ``sys.argv[1:]``), train.

    ``--resume auto`` continues from ``output_dir/checkpoints/latest.pth`` when it exists; ``--resume
    PATH`` from that file. Exits with 128 + signal number when SIGTERM/SIGINT interrupted the run
    (after saving ``latest.pth``). ``train_kwargs`` (method, loader, val_dataset) pass through to
    :func:`train`. Returns train's result dict.
    """
    p = _parser("Train the experiment described by config.py.")
    p.add_argument("--resume", default="", metavar="auto|PATH",
                   help="continue from output_dir/checkpoints/latest.pth ('auto') or from a latest.pth file")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        cfg = apply_overrides(copy.deepcopy(config), args.overrides)
        result = train(cfg, resume=args.resume, **train_kwargs)
    if result["status"] == "interrupted":
        sys.exit(128 + int(result["signal"]))
    return result


# ----------------------------------------------------------------------------- eval


def _snapshot_epochs(directory: Path) -> dict[int, Path]:
    found = {}
    for path in directory.glob("epoch-*.pth"):
        m = re.fullmatch(r"epoch-(\d+)\.pth", path.name)
        if m:
            found[int(m.group(1))] = path
    return found


def select_snapshots(spec: str, ckpt_dir) -> tuple[list[tuple[int | None, Path]], list[int]]:
    """The checkpoints an ``-e`` value names: ``([(epoch or None, path), ...] in epoch order, missing)``.

    ``last`` -> the highest ``epoch-<e>.pth`` in ``ckpt_dir``; ``all`` -> every one; ``20-33`` ->
    those of epochs 20..33 that exist (``missing`` lists the others); ``25`` -> that epoch;
    comma-separated lists combine; anything naming a file (``*.pth`` or containing a path separator)
    is taken as that file. UserError when a part matches nothing.
    """
    ckpt_dir = Path(ckpt_dir)
    available = _snapshot_epochs(ckpt_dir) if ckpt_dir.is_dir() else {}
    avail_text = (f"available epochs: {_ranges(sorted(available))}" if available
                  else f"no epoch-<e>.pth in {ckpt_dir}; train first or give -e PATH")
    chosen: dict = {}
    missing: list[int] = []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        if part.endswith(".pth") or os.sep in part or "/" in part:
            path = Path(part)
            if not path.is_file():
                raise UserError(f"-e {part}: file not found")
            m = re.fullmatch(r"epoch-(\d+)\.pth", path.name)
            chosen[(path.resolve())] = (int(m.group(1)) if m else None, path)
            continue
        if part == "all":
            if not available:
                raise UserError(f"-e all: {avail_text}")
            chosen.update({available[e].resolve(): (e, available[e]) for e in available})
            continue
        if part == "last":
            if not available:
                raise UserError(f"-e last: {avail_text}")
            e = max(available)
            chosen[available[e].resolve()] = (e, available[e])
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(f"-e {part}: expected 'last', 'all', an epoch (25), a range (20-33) or a .pth path")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UserError(f"-e {part}: the range is empty (first epoch after last)")
        hits = [e for e in range(lo, hi + 1) if e in available]
        missing += [e for e in range(lo, hi + 1) if e not in available]
        if not hits:
            raise UserError(f"-e {part}: no snapshot of those epochs in {ckpt_dir}; {avail_text}")
        for e in hits:
            chosen[available[e].resolve()] = (e, available[e])
    items = list(chosen.values())
    items.sort(key=lambda t: (t[0] is None, t[0] if t[0] is not None else 0, str(t[1])))
    return items, sorted(set(missing))


def _ranges(epochs: list[int]) -> str:
    parts, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(str(start) if start == e else f"{start}-{e}")
            start = None
    return ", ".join(parts)


def eval_main(config, argv=None, *, val_dataset=None) -> dict:
    """Entry point of an experiment's ``eval.py``: evaluate saved snapshots on the val set.

    ``-e`` selects snapshots (see :func:`select_snapshots`; default ``last``) in
    ``output_dir/checkpoints``; each is loaded with ``furnace.models.load_segmentor`` and evaluated
    with the config's eval settings (KEY=VALUE overrides apply, e.g. ``eval_scales=[0.75,1,1.25]
    eval_flip=true``). Prints each snapshot's mIoU, then the per-class table of the best and a
    last/best summary, and merges the results into ``eval_results.json`` beside the checkpoints.
    ``--save-pred DIR`` writes index and colour PNGs (one sub-folder per snapshot when several).
    Returns ``{"results": {file name: metrics}, "last": name, "best": name}``.
    """
    p = _parser("Evaluate saved snapshots of the experiment described by config.py.")
    p.add_argument("-e", "--epochs", default="last", metavar="SPEC",
                   help="'last' (default), 'all', an epoch (25), a range (20-33), a comma list, or a .pth path")
    p.add_argument("--save-pred", default="", metavar="DIR", help="write index and colour prediction PNGs")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        cfg = apply_overrides(copy.deepcopy(config), args.overrides)
        # resolved for one process: evaluation shards the val list, it never splits global_batch
        cfg = resolve_config(cfg)
        _rank, world, device = dist.setup(cfg.device)
        chosen, missing = select_snapshots(args.epochs, ckpt.checkpoint_dir(cfg))
        if val_dataset is None:
            from furnace.datasets import build_val_dataset

            val_dataset = build_val_dataset(cfg)
        evaluator = Evaluator(cfg, device)
        say = print if dist.is_main() else (lambda *a, **k: None)
        say(f"evaluating {len(chosen)} snapshot(s) on {len(val_dataset)} val images with {world} process(es); "
            f"crop {cfg.eval_crop}, scales {list(cfg.eval_scales)}, flip {bool(cfg.eval_flip)}", flush=True)
        if missing:
            say(f"note: no snapshot for epoch(s) {_ranges(missing)}; skipped", flush=True)
        results, metrics = {}, {}
        for epoch, path in chosen:
            net = ckpt.load_snapshot(path, map_location=device).to(device)
            if evaluator.channels_last:  # the weights in the layout the evaluator feeds (CUDA only)
                net = net.to(memory_format=torch.channels_last)
            pred_dir = None
            if args.save_pred:
                pred_dir = Path(args.save_pred) / path.stem if len(chosen) > 1 else Path(args.save_pred)
            res = evaluator.run(net, val_dataset, save_pred_dir=pred_dir, progress=True)
            metrics[path.name] = res
            results[path.name] = ckpt.eval_entry(epoch, path, res, cfg)
            say(f"{path.name}: mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}", flush=True)
        names = list(results)
        last = names[-1]
        best = max(names, key=lambda n: -1.0 if math.isnan(metrics[n]["miou"]) else metrics[n]["miou"])
        say(f"\nbest snapshot {best}:\n{format_results(metrics[best])}\n")
        say(f"{'snapshot'.ljust(16)}  mIoU")
        for n in names:
            tag = "  <- best" if n == best else ""
            say(f"{n.ljust(16)}  {100 * metrics[n]['miou']:5.2f}{tag}")
        say(f"last {last}: {100 * metrics[last]['miou']:.2f}   best {best}: {100 * metrics[best]['miou']:.2f}")
        json_path = ckpt.eval_results_file(chosen[-1][1])
        if dist.run_on_main(lambda: ckpt.write_eval_results(json_path, results, last, best)):
            say(f"results written to {json_path}", flush=True)
    return {"results": results, "last": last, "best": best}
