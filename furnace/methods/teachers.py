"""Frozen teachers: loaded segmentors that only ever infer, and own how to do that fast.

A :class:`FrozenTeacher` wraps one teacher network and decides how a group of inputs goes through it:

* **batched** (``mgd_impl="batched"``, default): all inputs in one pass. With eval-mode BN (the
  default) each BatchNorm is folded into the convolution before it, and the weights are stored
  channels_last, the layout oneDNN (CPU) and cuDNN run inference convolutions fastest in. Neither
  changes what the teacher computes beyond float rounding. ``compile_frozen`` puts the batched pass
  through ``torch.compile`` (``cfg.compile_teachers``).
* **reference** (``mgd_impl="reference"``), and whenever the teacher's BN is in train mode
  (``teacher_bn="train"``: batch statistics, which batching would change): one pass per input, as
  in the original.

The method registers it with ``Method.add_frozen``: it follows ``.to()`` and ``train(mode)`` but
stays out of the method's parameters and state_dict.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models import fold_batchnorm


class FrozenTeacher(nn.Module):
    """One frozen teacher; :meth:`infer` returns its logits of each input and the last one's feature.

    ``batched``: the fast path described in the module docstring; ``bn_train``: the teacher's BN
    normalises with batch statistics while the method trains (the reference's behaviour), otherwise
    it stays in eval mode.
    """

    def __init__(self, network: nn.Module, *, batched: bool = True, bn_train: bool = False):
        super().__init__()
        if batched:
            if not bn_train:
                network = fold_batchnorm(network)
            network.to(memory_format=torch.channels_last)
        self.network = network.requires_grad_(False)
        self.batched, self.bn_train = batched, bn_train
        self.compiled_call = None  # see compile_frozen()
        self.train()

    def train(self, mode: bool = True):
        """Eval mode, unless ``bn_train`` and the method trains."""
        return super().train(mode and self.bn_train)

    def compile_frozen(self, **compile_kwargs) -> None:
        """Run the batched pass through ``torch.compile`` (``compile_kwargs`` go to it).

        Inductor's ``freezing`` treats the weights as constants: it folds what it can and, on a CPU,
        keeps the convolution weights prepacked for oneDNN. That is right because a teacher never
        changes after it is loaded (move the method to its device before the first step: the weights
        are captured then). The flag is set around every call, not passed as ``options``: Dynamo reads
        it while tracing, and ``options`` only reach Inductor (measured: ResNet-101 2.09 s with
        ``options``, 1.96 s with the flag, 2.25 s uncompiled, 8 images of 256², 2 CPU threads).
        Compilation happens at the next call; the reference path and train-mode BN keep calling the
        network as it is.
        """
        import torch._inductor.config as inductor_config

        compiled = torch.compile(self.network, **compile_kwargs)

        def call(*args, **kwargs):
            with inductor_config.patch(freezing=True):
                return compiled(*args, **kwargs)

        self.compiled_call = call

    def infer(self, inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([logits of each input], decoder feature of the last input)``; call without gradient."""
        if self.network.training or not self.batched:
            outs = [self.network(x, return_feature=True) for x in inputs]
            return [o[0] for o in outs], outs[-1][1]
        forward = self.compiled_call or self.network
        all_logits, all_feat = forward(torch.cat(list(inputs)), return_feature=True)
        return list(all_logits.chunk(len(inputs))), all_feat.chunk(len(inputs))[-1]
