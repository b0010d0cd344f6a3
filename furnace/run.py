"""What an experiment folder's ``train.py`` / ``eval.py`` run (:func:`train_main`, :func:`eval_main`, also under
torchrun): prepare the config once, build the method, datasets and models, hand them to the engine.

    python train.py [--resume auto|PATH] [KEY=VALUE ...]
    python eval.py  [-e 20-33 | -e last | -e all | -e PATH | -e FILE.onnx] [--save-pred DIR] [KEY=VALUE ...]
"""
import math
import os
import sys
from collections import Counter
from pathlib import Path

import torch

from .config import prepare
from .datasets import TrainLoader, build_val_dataset, check_dataset
from .datasets.loader import check_epoch
from .engine import checkpoint as ckpt
from .engine import dist, trainer
from .engine.cli import parser, ranges, select_snapshots, user_errors
from .engine.evaluator import Evaluator, format_results
from .engine.rng import preserved_cpu_rng, seed_everything
from .methods import METHODS, build_method
from .methods.base import check_files, trained_network
from .utils import UserError


def preflight(cfg, resume: str = ""):
    """The checks of a run that need no process group, so that they stop every process alike before the
    rendezvous (and ``train.py --check`` before a launch): precision vs device (e.g. amp=fp16 on a CPU), the
    data lists, the ImageNet and teacher files, the file ``resume`` names. Returns the resume path (or None)."""
    for key in ("amp", "eval_amp"):
        dist.amp_choice(cfg.get(key, "none"), dist.resolve_device(cfg.device), key)
    if cfg.check_data:
        check_dataset(cfg)
        check_epoch(cfg)
    check_files(cfg, METHODS[cfg.method].teachers)
    return ckpt.find_resume(cfg, resume)


def train(cfg, *, resume: str = "", method=None, loader=None, val_dataset=None) -> dict:
    """Train the prepared ``cfg`` on this process's share; ``resume``: ``""``, ``"auto"`` or a ``latest.pth`` path.
    The parts default to the config's method (the same initial weights on every process), this rank's
    TrainLoader and the val set. Returns :func:`furnace.engine.trainer.train`'s result."""
    resume_path = preflight(cfg, resume)
    rank, world, device = dist.setup(cfg.device, timeout_s=cfg.dist_timeout_s)
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
    """``train.py``: parse ``argv``, prepare ``config`` for this run's process count, :func:`train` (with ``parts``).
    Returns its result; exits 128 + signal number when SIGTERM/SIGINT/SIGUSR1 interrupted the run."""
    p = parser("Train the experiment described by config.py.")
    p.add_argument("--resume", default="", metavar="auto|PATH",
                   help="continue from output_dir/checkpoints/latest.pth ('auto') or from a latest.pth file")
    p.add_argument("--check", action="store_true", help="check the config, data lists and files for this run's "
                   "process count (WORLD_SIZE), then exit without training (tools/launch.sh runs it first)")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        cfg = prepare(config, args.overrides, env=os.environ, world_size=dist.env_world_size())
        if args.check:
            preflight(cfg, args.resume)
            if cfg.pretrained:  # the ImageNet file loaded into the network, as training will
                trained_network(cfg)
            print(f"check passed: {cfg.method} {cfg.arch} on {cfg.dataset}, {dist.env_world_size()} process(es)")
            return {"status": "checked"}
        result = train(cfg, resume=args.resume, **parts)
    if result["status"] == "interrupted":
        sys.exit(128 + int(result["signal"]))
    return result


def eval_main(config, argv=None, *, val_dataset=None) -> dict:
    """``eval.py``: evaluate the ``-e`` snapshots (:func:`~furnace.engine.cli.select_snapshots`) with the config's
    eval settings, print and merge the results into ``eval_results.json`` beside them; ``--save-pred DIR`` writes
    prediction PNGs (a sub-folder per snapshot when several). An exported ``.onnx`` file runs in ONNX Runtime
    through the same evaluator (its class count checked first); its results go to ``output_dir/checkpoints``
    wherever the file lies. Returns ``{"results": {file name: entry}, "last", "best"}``."""
    p = parser("Evaluate saved snapshots of the experiment described by config.py.")
    p.add_argument("-e", "--epochs", default="last", metavar="SPEC",
                   help="'last' (default), 'all', an epoch (25), a range (20-33), a comma list, a .pth path, "
                        "or an exported .onnx file")
    p.add_argument("--save-pred", default="", metavar="DIR", help="write index and colour prediction PNGs")
    with user_errors():
        args = p.parse_intermixed_args(argv)
        # prepared for one process: evaluation shards the val list, it never splits global_batch
        cfg = prepare(config, args.overrides, env=os.environ)
        _rank, world, device = dist.setup(cfg.device, timeout_s=cfg.dist_timeout_s)
        chosen, missing = select_snapshots(args.epochs, ckpt.checkpoint_dir(cfg))
        onnx_nets = _onnx_networks(chosen, int(cfg.num_classes))
        if val_dataset is None:
            val_dataset = build_val_dataset(cfg)
        evaluator = Evaluator(cfg, device, layout=getattr(val_dataset, "layout", None))
        say = print if dist.is_main() else (lambda *a, **k: None)
        say(f"evaluating {len(chosen)} snapshot(s) on {len(val_dataset)} val images with {world} process(es); "
            f"crop {cfg.eval_crop}, scales {list(cfg.eval_scales)}, flip {bool(cfg.eval_flip)}", flush=True)
        if missing:
            say(f"note: no snapshot for epoch(s) {ranges(missing)}; skipped", flush=True)
        results, metrics = {}, {}
        # a file is named by its name, or by its path where two chosen files share a name (two stages' student.onnx)
        counts = Counter(path.name for _, path in chosen)
        for epoch, path in chosen:
            name = path.name if counts[path.name] == 1 else str(path)
            if path in onnx_nets:
                net = onnx_nets[path]
            else:
                net = ckpt.load_snapshot(path, map_location=evaluator.device).to(evaluator.device)
                if evaluator.channels_last:  # the weights in the layout the evaluator feeds (CUDA only)
                    net = net.to(memory_format=torch.channels_last)
            sub = Path(name).stem if counts[path.name] == 1 else name.strip("/").replace("/", "_")
            pred_dir = Path(args.save_pred) / (sub if len(chosen) > 1 else "") if args.save_pred else None
            metrics[name] = res = evaluator.run(net, val_dataset, save_pred_dir=pred_dir, progress=True)
            results[name] = ckpt.eval_entry(epoch, path, res, cfg)
            say(f"{name}: mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}", flush=True)
        exported = {name for name, entry in results.items() if str(entry["path"]).endswith(".onnx")}
        last, best = _report(metrics, say, exported)
        snapshots = [path for _, path in chosen if path not in onnx_nets]
        json_path = (ckpt.eval_results_file(snapshots[-1]) if snapshots
                     else ckpt.checkpoint_dir(cfg) / "eval_results.json")
        if dist.run_on_main(lambda: ckpt.write_eval_results(json_path, results, last)):
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


def _report(metrics: dict, say, exported=frozenset()) -> tuple[str, str]:
    """Print the best snapshot's per-class table and the mIoU of each; return ``(last, best)``, of the snapshots
    when there are any (``exported`` .onnx files are listed beside them), else of the files."""
    names = list(metrics)
    pool = [n for n in names if n not in exported] or names
    last = pool[-1]
    best = max(pool, key=lambda n: -1.0 if math.isnan(metrics[n]["miou"]) else metrics[n]["miou"])
    say(f"\nbest snapshot {best}:\n{format_results(metrics[best])}\n")
    say(f"{'snapshot'.ljust(16)}  mIoU")
    for n in names:
        say(f"{n.ljust(16)}  {100 * metrics[n]['miou']:5.2f}" + ("  <- best" if n == best else ""))
    say(f"last {last}: {100 * metrics[last]['miou']:.2f}   best {best}: {100 * metrics[best]['miou']:.2f}")
    return last, best
