"""Frozen teachers: loaded segmentors that only infer, the fast way or the original's way.

* fast (``teacher_impl=batched``, eval-mode BN): every input in one pass through a copy whose
  BatchNorms are folded into the convolutions, stored channels_last (the layout oneDNN and cuDNN run
  inference convolutions fastest in), optionally through ``torch.compile`` with the weights as constants;
  the same outputs to float rounding.
* the original's (``teacher_impl=reference``, and always with ``teacher_bn=train``, whose batch
  statistics batching would change): one pass per input through the network as loaded.
"""
from typing import NamedTuple

import torch

from ..models import fold_batchnorm


class TeacherOutput(NamedTuple):
    """A teacher's outputs for each of its inputs, in input order."""

    logits: tuple  # (B, C, H, W) per input
    features: tuple  # decoder features (B, D, H/4, W/4) per input


class FrozenTeacher:
    """``teacher(x1, x2, ...) -> TeacherOutput`` without gradient; never trained, not an ``nn.Module``
    of the method (so outside its parameters, state_dict and DDP)."""

    def __init__(self, network: torch.nn.Module, *, fast: bool = True, bn_train: bool = False, compile: bool = False):
        self.fast = fast and not bn_train
        network.requires_grad_(False).train(bn_train)
        if self.fast:
            network = fold_batchnorm(network).to(memory_format=torch.channels_last)
        self.network = self._call = network
        if compile:
            self.compile()

    def compile(self) -> None:
        """Run the fast pass through ``torch.compile`` with Inductor's ``freezing`` (weights as constants,
        prepacked on a CPU); it compiles at the next call. The flag is set around each call: Dynamo reads it
        while tracing, ``options=`` reach only Inductor."""
        import torch._inductor.config as inductor_config

        compiled = torch.compile(self.network)

        def call(*args, **kwargs):
            with inductor_config.patch(freezing=True):
                return compiled(*args, **kwargs)

        self._call = call

    # no_grad, not inference_mode: a compiled student graph may keep these outputs for its backward
    # (compile=true found it on a GPU), which inference tensors refuse
    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> TeacherOutput:
        if not self.fast:
            outs = [self.network(x, return_feature=True) for x in inputs]
            return TeacherOutput(tuple(o[0] for o in outs), tuple(o[1] for o in outs))
        logits, features = self._call(torch.cat(inputs), return_feature=True)
        return TeacherOutput(logits.chunk(len(inputs)), features.chunk(len(inputs)))
