"""The training engine: one loop for every method, the evaluator, checkpoints, logging, DDP helpers. It builds
nothing: :mod:`furnace.run` hands the parts in."""
from .evaluator import Evaluator, format_results, metrics_from_confusion, sliding_windows
from .trainer import train

__all__ = ["train", "Evaluator", "format_results", "metrics_from_confusion", "sliding_windows"]
