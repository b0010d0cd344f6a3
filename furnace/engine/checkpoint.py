"""A run's files in ``<output_dir>/checkpoints/``: ``latest.pth`` (the full training state, rewritten every
``save_every_minutes``, every ``save_every_iters``, at the end and on a stop; at each epoch's end instead when
``save_every_minutes`` is 0), ``epoch-<e>.pth`` (segmentor file of ``method.eval_network()``
after 1-based epoch e) and ``eval_results.json`` (val metrics per snapshot, from the run's final evaluation and
every eval.py)."""
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from ..config import config_to_dict
from ..models.weights import load_segmentor, old_decoder_order_message, save_segmentor
from ..utils import UserError, atomic_save, safe_load

TRAIN_STATE_FORMAT = "mgd-ssss.train-state"
TRAIN_STATE_VERSION = 2  # version 1: the decoder's old channel order, refused


def checkpoint_dir(cfg) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def latest_path(cfg) -> Path:
    return checkpoint_dir(cfg) / "latest.pth"


def snapshot_path(cfg, epoch: int) -> Path:
    return checkpoint_dir(cfg) / f"epoch-{epoch}.pth"


def keep_snapshot(epoch: int, total_epochs: int, last: int, every: int) -> bool:
    """Whether the snapshot after 1-based ``epoch`` is written: the last ``last`` epochs, every ``every``-th
    (when > 0) and always the final one (34 epochs, last=14: epochs 21..34)."""
    return epoch >= total_epochs or epoch > total_epochs - last or (every > 0 and epoch % every == 0)


def save_training_state(path, *, method, optimizer, scaler, epoch, iter_in_epoch, global_iter, rng, cfg) -> None:
    """Write ``latest.pth`` atomically, on rank 0 only; ``rng`` is the list of per-rank generator states.
    Tensors and plain values only (loads with ``weights_only=True``). A failed write keeps the previous file
    and raises UserError naming the path and the cause."""
    state = {
        "format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION,
        "method": method.state_dict(),  # the trained networks; frozen teachers are not in it
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},  # {} unless fp16 AMP
        "epoch": int(epoch), "iter_in_epoch": int(iter_in_epoch),  # 0-based epoch in progress, iterations of it done
        "global_iter": int(global_iter),  # optimizer steps done = the LR-schedule position
        "rng": list(rng), "world_size": len(rng),  # RNG states are per rank
        "config": config_to_dict(cfg),
    }
    try:
        atomic_save(state, path)
    except Exception as err:
        raise UserError(f"{path}: writing the training checkpoint failed ({type(err).__name__}: {err}); the previous "
                        "file there, if any, is unchanged. Free disk space or fix permissions, then continue with "
                        "--resume auto") from err


def load_training_state(path) -> dict:
    """Read a ``latest.pth`` written by :func:`save_training_state`; UserError naming the file otherwise."""
    state = safe_load(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise UserError(f"{path}: not a furnace training checkpoint (latest.pth); to evaluate or fine-tune from a "
                        "snapshot or released weights, use eval.py or the model's pretrained/teacher settings")
    if state.get("version") == 1:
        raise UserError(old_decoder_order_message(path, "training checkpoint", 1))
    if state.get("version") != TRAIN_STATE_VERSION:
        raise UserError(f"{path}: training-checkpoint version {state.get('version')} is not supported "
                        f"(this furnace writes version {TRAIN_STATE_VERSION})")
    return state


def find_resume(cfg, resume: str) -> Path | None:
    """The ``latest.pth`` to resume from, None for a fresh start: ``""`` fresh; ``"auto"`` the run's own when it
    exists; anything else a path that must exist."""
    if not resume:
        return None
    if resume == "auto":
        path = latest_path(cfg)
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"--resume {resume}: file not found; give a latest.pth path or 'auto'")
    return path


def remove_stale_temporaries(cfg) -> list[Path]:
    """Delete (on rank 0) the ``.<name>.<random>.tmp`` files of saves killed mid-write (``kill -9``, power loss);
    ``atomic_save`` renames only complete files, so these are never a checkpoint. Returns the removed paths."""
    removed = []
    for path in checkpoint_dir(cfg).glob(".*.pth.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def save_snapshot(network, path, extra: dict) -> None:
    """Write ``network`` as a segmentor file (``furnace.models.save_segmentor``, atomic)."""
    try:
        save_segmentor(network, path, extra=extra)
    except UserError as err:
        raise UserError(f"{err}, then continue with --resume auto") from err
    except Exception as err:
        raise UserError(f"{path}: writing the snapshot failed ({type(err).__name__}: {err}); free disk space or fix "
                        "permissions, then continue with --resume auto") from err


def load_snapshot(path, map_location="cpu"):
    """Read a segmentor file back as a network in eval mode (``furnace.models.load_segmentor``)."""
    return load_segmentor(path, map_location=map_location)


def eval_results_file(snapshot) -> Path:
    """The ``eval_results.json`` that records evaluations of ``snapshot``: the one beside it."""
    return Path(snapshot).parent / "eval_results.json"


def eval_settings(cfg) -> dict:
    """The evaluation settings an ``eval_results.json`` entry was measured with."""
    return {"crop": cfg.eval_crop, "scales": list(cfg.eval_scales), "flip": bool(cfg.eval_flip),
            "amp": cfg.get("eval_amp", "none")}


def _json_number(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def eval_entry(epoch: int, path, res: dict, cfg) -> dict:
    """One snapshot's record in ``eval_results.json`` (metrics of ``Evaluator.run`` and the eval settings)."""
    return {"epoch": epoch, "path": str(path), "miou": _json_number(res["miou"]),
            "pixel_acc": _json_number(res["pixel_acc"]),
            "iou": {n: _json_number(v) for n, v in zip(res["class_names"], res["iou"])}, "eval": eval_settings(cfg)}


def read_eval_results(path) -> dict:
    """The entries (snapshot file name -> :func:`eval_entry`) of the results file ``path``; {} if unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    results = data.get("results") if isinstance(data, dict) else None
    return results if isinstance(results, dict) else {}


def write_eval_results(path, entries: dict, last: str, best: str | None = None) -> bool:
    """Merge ``entries`` (file name -> :func:`eval_entry`) into the results file ``path`` atomically; ``best`` None:
    the highest mIoU of the file's snapshots (of its exported files if it has no snapshot). False, with a
    warning, if it cannot be written: the metrics were printed, the run goes on."""
    path = Path(path)
    results = {**read_eval_results(path), **entries}
    if best is None:
        pool = [n for n, e in results.items() if not str(e.get("path", "")).endswith(".onnx")] or list(results)
        best = max(pool, key=lambda n: results[n].get("miou") or -1.0)  # None (no finite mIoU) ranks last
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps({"results": results, "last": last, "best": best}, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        print(f"warning: could not write {path} ({err}); the results above are not saved", file=sys.stderr)
        return False
    return True
