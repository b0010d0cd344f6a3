"""The training engine: one loop for every method, the evaluator, checkpoints, logging, DDP helpers.

Nothing here knows about MGD: a method is an ``nn.Module`` returning named losses (see ``trainer``).
"""
from .cli import eval_main, train_main
from .evaluator import Evaluator, evaluate, format_results, metrics_from_confusion, sliding_windows
from .trainer import train

__all__ = ["train", "train_main", "eval_main", "Evaluator", "evaluate", "format_results",
           "metrics_from_confusion", "sliding_windows"]
