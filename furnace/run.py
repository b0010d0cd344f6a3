"""What an experiment folder runs: prepare the config once, build the parts, hand them to the engine.

    python train.py [--resume auto|PATH] [KEY=VALUE ...]
    python eval.py  [-e 20-33 | -e last | -e all | -e PATH] [--save-pred DIR] [KEY=VALUE ...]

An experiment's ``train.py`` and ``eval.py`` call :func:`train_main` and :func:`eval_main`. This layer
sits above the engine (which only loops and evaluates) and the methods, datasets and models (which it
builds). Both commands also run under ``torchrun`` (training splits the global batch, evaluation shards
the val list). A UserError anywhere prints ``error: <message>`` on stderr and exits with status 2.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

from .config import prepare
from .datasets import TrainLoader, build_val_dataset, check_dataset
from .engine import checkpoint as ckpt
from .engine import dist, trainer
from .engine.cli import parser, ranges, select_snapshots, user_errors
from .engine.evaluator import Evaluator, format_results
from .engine.rng import preserved_cpu_rng, seed_everything
from .methods import build_method


def train(cfg, *, resume: str = "", method=None, loader=None, val_dataset=None) -> dict:
    """Train the prepared config ``cfg`` on this process's share.

    ``method`` / ``loader`` / ``val_dataset`` default to :func:`furnace.methods.build_method` (seeded with
    ``cfg.seed``: the same initial weights on every process), this rank's
    :class:`~furnace.datasets.TrainLoader` and :func:`furnace.datasets.build_val_dataset`. ``resume``:
    ``""`` fresh, ``"auto"`` continue from ``checkpoints/latest.pth`` when it exists, or a path to one.
    The result: see :func:`furnace.engine.trainer.train`.
    """
    # Data and resume-file errors before joining the process group: they stop every process alike, so
    # none is left waiting in the rendezvous.
    if cfg.check_data:
        check_dataset(cfg)
    resume_path = ckpt.find_resume(cfg, resume)
    rank, world, device = dist.setup(cfg.device)
    if resume == "auto" and resume_path is None and dist.is_main():
        print(f"--resume auto: no {ckpt.latest_path(cfg)} yet, starting fresh", flush=True)
    if method is None:
        seed_everything(cfg.seed)  # identical initial weights on every process
        method = build_method(cfg, device)
    if loader is None:
        with preserved_cpu_rng():
            loader = TrainLoader(cfg, rank=rank, world_size=world, need_unlabeled=method.uses_unlabeled)
    if val_dataset is None:
        val_dataset = build_val_dataset(cfg)
    return trainer.train(cfg, method=method, loader=loader, val_dataset=val_dataset, device=device,
                         resume_path=resume_path)


def train_main(config, argv=None, **parts) -> dict:
    """Entry point of an experiment's ``train.py``: parse ``argv`` (default ``sys.argv[1:]``), prepare the
    config (environment, then ``KEY=VALUE`` over ``config``) for this run's process count, train.

    Exits with 128 + signal number when SIGTERM/SIGINT interrupted the run (after saving ``latest.pth``).
    ``parts`` (method, loader, val_dataset) pass through to :func:`train`. Returns train's result dict.
    """
    p = parser("Train the experiment described by config.py.")
    p.add_argument("--resume", default="", metavar="auto|PATH",
                   help="continue from output_dir/checkpoints/latest.pth ('auto') or from a latest.pth file")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        cfg = prepare(config, args.overrides, env=os.environ, world_size=dist.env_world_size())
        result = train(cfg, resume=args.resume, **parts)
    if result["status"] == "interrupted":
        sys.exit(128 + int(result["signal"]))
    return result


def eval_main(config, argv=None, *, val_dataset=None) -> dict:
    """Entry point of an experiment's ``eval.py``: evaluate saved snapshots on the val set.

    ``-e`` selects snapshots (:func:`furnace.engine.cli.select_snapshots`; default ``last``) in
    ``output_dir/checkpoints``; each is loaded with ``furnace.models.load_segmentor`` and evaluated with the
    config's eval settings (``KEY=VALUE`` overrides apply, e.g. ``eval_scales=[0.75,1,1.25] eval_flip=true``).
    Prints each snapshot's mIoU, the per-class table of the best and a last/best summary, and merges the
    results into ``eval_results.json`` beside the checkpoints. ``--save-pred DIR`` writes index and colour
    PNGs (one sub-folder per snapshot when several). Returns ``{"results": {file name: metrics}, "last",
    "best"}``.
    """
    p = parser("Evaluate saved snapshots of the experiment described by config.py.")
    p.add_argument("-e", "--epochs", default="last", metavar="SPEC",
                   help="'last' (default), 'all', an epoch (25), a range (20-33), a comma list, or a .pth path")
    p.add_argument("--save-pred", default="", metavar="DIR", help="write index and colour prediction PNGs")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        # prepared for one process: evaluation shards the val list, it never splits global_batch
        cfg = prepare(config, args.overrides, env=os.environ)
        _rank, world, device = dist.setup(cfg.device)
        chosen, missing = select_snapshots(args.epochs, ckpt.checkpoint_dir(cfg))
        if val_dataset is None:
            val_dataset = build_val_dataset(cfg)
        evaluator = Evaluator(cfg, device, layout=getattr(val_dataset, "layout", None))
        say = print if dist.is_main() else (lambda *a, **k: None)
        say(f"evaluating {len(chosen)} snapshot(s) on {len(val_dataset)} val images with {world} process(es); "
            f"crop {cfg.eval_crop}, scales {list(cfg.eval_scales)}, flip {bool(cfg.eval_flip)}", flush=True)
        if missing:
            say(f"note: no snapshot for epoch(s) {ranges(missing)}; skipped", flush=True)
        results, metrics = _evaluate_snapshots(cfg, chosen, evaluator, val_dataset, args.save_pred, say)
        last, best = _report(metrics, say)
        json_path = ckpt.eval_results_file(chosen[-1][1])
        if dist.run_on_main(lambda: ckpt.write_eval_results(json_path, results, last, best)):
            say(f"results written to {json_path}", flush=True)
    return {"results": results, "last": last, "best": best}


def _evaluate_snapshots(cfg, chosen, evaluator, val_dataset, save_pred: str, say) -> tuple[dict, dict]:
    """``(results file entries, metrics)`` of each chosen snapshot, both keyed by file name."""
    results, metrics = {}, {}
    for epoch, path in chosen:
        net = ckpt.load_snapshot(path, map_location=evaluator.device).to(evaluator.device)
        if evaluator.channels_last:  # the weights in the layout the evaluator feeds (CUDA only)
            net = net.to(memory_format=torch.channels_last)
        pred_dir = None
        if save_pred:
            pred_dir = Path(save_pred) / path.stem if len(chosen) > 1 else Path(save_pred)
        res = evaluator.run(net, val_dataset, save_pred_dir=pred_dir, progress=True)
        metrics[path.name] = res
        results[path.name] = ckpt.eval_entry(epoch, path, res, cfg)
        say(f"{path.name}: mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}", flush=True)
    return results, metrics


def _report(metrics: dict, say) -> tuple[str, str]:
    """Print the best snapshot's per-class table and the mIoU of each; return ``(last, best)``."""
    names = list(metrics)
    last = names[-1]
    best = max(names, key=lambda n: -1.0 if math.isnan(metrics[n]["miou"]) else metrics[n]["miou"])
    say(f"\nbest snapshot {best}:\n{format_results(metrics[best])}\n")
    say(f"{'snapshot'.ljust(16)}  mIoU")
    for n in names:
        say(f"{n.ljust(16)}  {100 * metrics[n]['miou']:5.2f}" + ("  <- best" if n == best else ""))
    say(f"last {last}: {100 * metrics[last]['miou']:.2f}   best {best}: {100 * metrics[best]['miou']:.2f}")
    return last, best
