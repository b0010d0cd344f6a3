"""SGD with per-parameter weight decay and the poly learning-rate schedule (SPEC §7)."""
import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters of ``module`` in non-empty groups: ``weight_decay`` for conv/linear weights,
    none for biases and normalisation weights (``ndim <= 1``)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(module: nn.Module, cfg) -> torch.optim.SGD:
    """SGD over ``module``'s parameters with ``cfg.lr``, ``cfg.momentum`` and ``cfg.weight_decay``."""
    return torch.optim.SGD(param_groups(module, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)


def poly_lr(base_lr: float, it: int, total: int, power: float = 0.9, warmup_iters: int = 0) -> float:
    """The lr after ``it`` completed iterations: ``base_lr * (1 - it/total) ** power``, times ``(it + 1) /
    warmup_iters`` during the warm-up (so the first step is never taken at lr 0)."""
    if total <= 0:
        raise ValueError(f"poly_lr: total iterations must be positive, got {total}")
    lr = base_lr * max(0.0, 1.0 - it / total) ** power
    if warmup_iters > 0 and it < warmup_iters:
        lr *= (it + 1) / warmup_iters
    return lr
