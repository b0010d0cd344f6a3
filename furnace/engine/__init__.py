"""The training engine: one loop for every method, the evaluator, checkpoints, logging, DDP helpers.

Nothing here knows about MGD or builds a method: the parts are handed in (see ``trainer``); the
experiment folders' commands live one layer up, in :mod:`furnace.run`.
"""
from .evaluator import Evaluator, format_results, metrics_from_confusion, sliding_windows
from .trainer import train

__all__ = ["train", "Evaluator", "format_results", "metrics_from_confusion", "sliding_windows"]
