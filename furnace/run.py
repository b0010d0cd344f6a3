"""What an experiment folder runs: build the parts from the config, hand them to the engine.

    python train.py [--resume auto|PATH] [KEY=VALUE ...]
    python eval.py  [-e 20-33 | -e last | -e all | -e PATH | -e FILE.onnx] [--save-pred DIR] [KEY=VALUE ...]

An experiment's ``train.py`` and ``eval.py`` are three lines calling :func:`train_main` and
:func:`eval_main`. This layer sits above both the engine (which only loops and evaluates) and the
methods, datasets and models (which it builds): the method named by ``cfg.method``, this process's
:class:`~furnace.datasets.TrainLoader`, the val set, and the data check before any of them. Both
commands also run under ``torchrun`` (training splits the global batch, evaluation shards the val
list). A UserError anywhere prints ``error: <message>`` on stderr and exits with status 2.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch

from .config import apply_overrides, resolve_config, validate_config
from .datasets import TrainLoader, build_val_dataset, check_dataset
from .datasets.layouts import layout_holding
from .engine import checkpoint as ckpt
from .engine import dist, trainer
from .engine.cli import parser, ranges, select_snapshots, user_errors
from .engine.evaluator import Evaluator, format_results
from .engine.rng import preserved_cpu_rng, seed_everything
from .methods import build_method
from .utils import UserError


def train(cfg, *, resume: str = "", method=None, loader=None, val_dataset=None) -> dict:
    """Train the experiment ``cfg`` (a base or resolved config) on this process's share.

    ``method`` / ``loader`` / ``val_dataset`` default to :func:`furnace.methods.build_method` (seeded
    with ``cfg.seed``: the same initial weights on every process), this rank's
    :class:`~furnace.datasets.TrainLoader` and :func:`furnace.datasets.build_val_dataset`. ``resume``
    and the result: see :func:`furnace.engine.trainer.train`.
    """
    # Config and data errors first, before joining the process group: they stop every process alike,
    # so none is left waiting in the rendezvous. The data check precedes resolution so that a
    # labeled_ratio without split lists is reported as such rather than as a missing epoch count.
    validate_config(cfg)
    if cfg.check_data:
        check_dataset(cfg)
    cfg = resolve_config(cfg, dist.env_world_size())
    ckpt.find_resume(cfg, resume)  # a missing --resume file, too
    rank, world, _device = dist.setup(cfg.device)
    if method is None:
        seed_everything(cfg.seed)  # identical initial weights on every process
        method = build_method(cfg)
    if loader is None:
        with preserved_cpu_rng():
            loader = TrainLoader(cfg, rank=rank, world_size=world,
                                 need_unlabeled=getattr(method, "needs_unlabeled", True))
    if val_dataset is None:
        val_dataset = build_val_dataset(cfg)
    return trainer.train(cfg, method=method, loader=loader, val_dataset=val_dataset, resume=resume)


def train_main(config, argv=None, **parts) -> dict:
    """Entry point of an experiment's ``train.py``: parse ``argv`` (default ``sys.argv[1:]``), train.

    ``--resume auto`` continues from ``output_dir/checkpoints/latest.pth`` when it exists; ``--resume
    PATH`` from that file. Exits with 128 + signal number when SIGTERM/SIGINT interrupted the run
    (after saving ``latest.pth``). ``parts`` (method, loader, val_dataset) pass through to
    :func:`train`. Returns train's result dict.
    """
    p = parser("Train the experiment described by config.py.")
    p.add_argument("--resume", default="", metavar="auto|PATH",
                   help="continue from output_dir/checkpoints/latest.pth ('auto') or from a latest.pth file")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        cfg = apply_overrides(copy.deepcopy(config), args.overrides)
        result = train(cfg, resume=args.resume, **parts)
    if result["status"] == "interrupted":
        sys.exit(128 + int(result["signal"]))
    return result


def eval_main(config, argv=None, *, val_dataset=None) -> dict:
    """Entry point of an experiment's ``eval.py``: evaluate saved snapshots on the val set.

    ``-e`` selects snapshots (see :func:`furnace.engine.cli.select_snapshots`; default ``last``) in
    ``output_dir/checkpoints``; each is loaded with ``furnace.models.load_segmentor`` (an exported ``.onnx``
    file runs in ONNX Runtime, its class count checked against the config first) and evaluated
    with the config's eval settings (KEY=VALUE overrides apply, e.g. ``eval_scales=[0.75,1,1.25]
    eval_flip=true``). Prints each snapshot's mIoU, then the per-class table of the best and a
    last/best summary, and merges the results into ``eval_results.json`` beside the checkpoints (under
    each file's name; an ``.onnx`` file's go to ``output_dir/checkpoints``, wherever the file lies).
    ``--save-pred DIR`` writes index and colour PNGs (one sub-folder per snapshot when several).
    Returns ``{"results": {file name: metrics}, "last": name, "best": name}``.
    """
    p = parser("Evaluate saved snapshots of the experiment described by config.py.")
    p.add_argument("-e", "--epochs", default="last", metavar="SPEC",
                   help="'last' (default), 'all', an epoch (25), a range (20-33), a comma list, a .pth path, "
                        "or an exported .onnx file")
    p.add_argument("--save-pred", default="", metavar="DIR", help="write index and colour prediction PNGs")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        cfg = apply_overrides(copy.deepcopy(config), args.overrides)
        # resolved for one process: evaluation shards the val list, it never splits global_batch
        cfg = resolve_config(cfg)
        _rank, world, device = dist.setup(cfg.device)
        chosen, missing = select_snapshots(args.epochs, ckpt.checkpoint_dir(cfg))
        onnx_nets = _onnx_networks(chosen, int(cfg.num_classes))
        if val_dataset is None:
            val_dataset = build_val_dataset(cfg)
        evaluator = Evaluator(cfg, device, layout=layout_holding(val_dataset, cfg))
        say = print if dist.is_main() else (lambda *a, **k: None)
        say(f"evaluating {len(chosen)} snapshot(s) on {len(val_dataset)} val images with {world} process(es); "
            f"crop {cfg.eval_crop}, scales {list(cfg.eval_scales)}, flip {bool(cfg.eval_flip)}", flush=True)
        if missing:
            say(f"note: no snapshot for epoch(s) {ranges(missing)}; skipped", flush=True)
        results, metrics = _evaluate_snapshots(cfg, chosen, evaluator, val_dataset, args.save_pred, say, onnx_nets)
        last, best = _report(metrics, say)
        snapshots = [path for _, path in chosen if path not in onnx_nets]
        json_path = (ckpt.eval_results_file(snapshots[-1]) if snapshots
                     else ckpt.checkpoint_dir(cfg) / "eval_results.json")
        if dist.run_on_main(lambda: ckpt.write_eval_results(json_path, results, last, best)):
            say(f"results written to {json_path}", flush=True)
    return {"results": results, "last": last, "best": best}


def _onnx_networks(chosen, num_classes: int) -> dict:
    """The chosen ``.onnx`` files opened in ONNX Runtime (path -> network), each refused unless it predicts
    the config's ``num_classes``: checked before any evaluation."""
    from .tools.export import OrtNetwork

    nets = {}
    for _, path in chosen:
        if path.suffix == ".onnx":
            nets[path] = OrtNetwork(path)
            if nets[path].num_classes != num_classes:
                raise UserError(f"{path}: the ONNX file predicts {nets[path].num_classes} classes but the config has "
                                f"num_classes={num_classes}; export a snapshot of this experiment (`python -m "
                                f"furnace.tools.export checkpoints/epoch-<e>.pth --out {path.name}`)")
    return nets


def _evaluate_snapshots(cfg, chosen, evaluator, val_dataset, save_pred: str, say,
                        onnx_nets: dict) -> tuple[dict, dict]:
    """``(results file entries, metrics)`` of each chosen snapshot (or ``onnx_nets`` file), both keyed by
    file name."""
    results, metrics = {}, {}
    for epoch, path in chosen:
        if path in onnx_nets:
            net = onnx_nets[path]
        else:
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
        tag = "  <- best" if n == best else ""
        say(f"{n.ljust(16)}  {100 * metrics[n]['miou']:5.2f}{tag}")
    say(f"last {last}: {100 * metrics[last]['miou']:.2f}   best {best}: {100 * metrics[best]['miou']:.2f}")
    return last, best
