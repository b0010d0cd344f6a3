"""MGD (SPEC §6): a lightweight student distilled from a frozen deep and a frozen wide teacher."""
from __future__ import annotations

import torch

from ..losses import (
    content_aware_loss,
    cutmix_pseudo_label,
    hard_pseudo_label,
    mix_by_mask,
    pixel_consistency_loss,
    semantic_sensitive_loss,
    supervised_loss,
)
from ..models import fold_batchnorm
from .base import Method, build_network, check_pretrained, load_teacher


class MGD(Method):
    """Multi-granularity distillation; only the terms that carry gradient to the student are computed.

    L = L_sup(S(x_l), y)
      + Σ_{T∈{T_D,T_W}} CE(S(x_l), argmax T(x_l))                     pixel level, labeled
      + Σ_{T∈{T_D,T_W}} CE(S(x_m), argmax[(1−M)·T(u0) + M·T(u1)])     pixel level, unlabeled
      + λ1 · semantic_sensitive(S(x_m), T_D(x_m))                     image level, deep teacher only
      + λ2 · content_aware(F_S(x_m), F_W(x_m))                        region level, wide teacher only

    The student's BatchNorm running statistics move with its passes on x_l and x_m; with
    ``cfg.student_bn_updates = "original"`` also with no-grad passes on u0 and u1 first, as the original's
    extra student passes did (order u0, u1, x_m, x_l). The losses and gradients are the same either way.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        check_pretrained(cfg)
        self.student = build_network(cfg)
        self.add_frozen("teacher_deep", load_teacher(cfg, "teacher_deep"))
        self.add_frozen("teacher_wide", load_teacher(cfg, "teacher_wide"))
        if cfg.mgd_impl == "batched":
            # The teachers only ever infer. With eval-mode BN (the default) each BatchNorm is folded
            # into the convolution before it, and the weights are stored channels_last, the layout
            # oneDNN (CPU) and cuDNN run inference convolutions fastest in. Neither changes what the
            # teachers compute beyond float rounding. The student's layout is cfg.channels_last's
            # business (the trainer converts the whole method when it is set).
            for name, teacher in list(self._frozen.items()):
                if cfg.teacher_bn == "eval":
                    teacher = self.add_frozen(name, fold_batchnorm(teacher))
                teacher.to(memory_format=torch.channels_last)
        self._teacher_calls: dict = {}  # compiled teacher forwards, see compile_teachers()
        if cfg.compile_teachers:
            self.compile_teachers()
        self.train()

    def train(self, mode: bool = True):
        """Student follows ``mode``; teachers stay in eval mode unless cfg.teacher_bn == "train"
        (the reference's behaviour: teacher BN normalises with batch statistics)."""
        super().train(mode)
        teacher_mode = mode and self.cfg.teacher_bn == "train"
        for teacher in self._frozen.values():
            teacher.train(teacher_mode)
        return self

    def eval_network(self):
        return self.student

    def compile_teachers(self, **compile_kwargs) -> None:
        """Run the batched teacher passes through ``torch.compile`` (``cfg.compile_teachers``).

        Inductor's ``freezing`` treats the teachers' weights as constants: it folds what it can and, on a
        CPU, keeps the convolution weights prepacked for oneDNN. That is right because a teacher never
        changes after it is loaded (move the method to its device before the first step: the weights are
        captured then). The flag is set around every call, not passed as ``options``: Dynamo reads it
        while tracing, and ``options`` only reach Inductor (measured: ResNet-101 2.09 s with ``options``,
        1.96 s with the flag, 2.25 s uncompiled, 8 images of 256², 2 CPU threads). Compilation happens at
        the next step; the reference path and teacher_bn="train" keep calling the modules as they are.
        ``compile_kwargs`` go to ``torch.compile``.
        """
        import torch._inductor.config as inductor_config

        def frozen_call(compiled):
            def call(*args, **kwargs):
                with inductor_config.patch(freezing=True):
                    return compiled(*args, **kwargs)
            return call

        self._teacher_calls = {name: frozen_call(torch.compile(t, **compile_kwargs))
                               for name, t in self._frozen.items()}

    # -- teachers -------------------------------------------------------------------------------
    def teacher_targets(self, x_l, u0, u1, x_m, mask):
        """Everything the student learns from the teachers, without gradient.

        Returns pseudo-labels (B, H, W) for the labeled and the CutMix images per teacher, T_D's logits
        of x_m and T_W's decoder feature of x_m. With teacher BN in eval mode the four inputs go through
        each teacher in one batched pass (channels_last, see __init__); in "train" mode (batch
        statistics) each input is a pass of its own, as in the reference, because batching would change
        the statistics. Every teacher output is computed once and feeds every loss that uses it.
        """
        groups = (x_l, u0, u1, x_m)
        targets = {}
        with torch.inference_mode():
            for name in ("teacher_deep", "teacher_wide"):
                teacher = self.frozen(name)
                if teacher.training or self.cfg.mgd_impl == "reference":
                    outs = [teacher(x, return_feature=True) for x in groups]
                    logits = [o[0] for o in outs]
                    feat_m = outs[3][1]
                else:
                    forward = self._teacher_calls.get(name, teacher)
                    all_logits, all_feat = forward(torch.cat(groups), return_feature=True)
                    logits = list(all_logits.chunk(4))
                    feat_m = all_feat.chunk(4)[3]
                targets[name] = {
                    "pseudo_l": hard_pseudo_label(logits[0]),
                    "pseudo_m": cutmix_pseudo_label(logits[1], logits[2], mask),
                    "logits_m": logits[3],
                    "feat_m": feat_m,
                }
        # Inference tensors may not be saved for backward; CE saves its target, so copy the labels out.
        for t in targets.values():
            t["pseudo_l"], t["pseudo_m"] = t["pseudo_l"].clone(), t["pseudo_m"].clone()
        return targets["teacher_deep"], targets["teacher_wide"]

    # -- the objective --------------------------------------------------------------------------
    def forward(self, batch):
        cfg = self.cfg
        x_l, y = batch["image_l"], batch["label_l"]
        u0, u1, mask = batch["image_u0"], batch["image_u1"], batch["mask_mix"]
        x_m = mix_by_mask(u0, u1, mask)
        deep, wide = self.teacher_targets(x_l, u0, u1, x_m, mask)

        if self.training and cfg.student_bn_updates == "original":
            # The original also ran the student on u0 and u1 without gradient; those passes only move the
            # student's BN running statistics (which evaluation uses), in the order u0, u1, x_m, x_l.
            with torch.no_grad():
                self.student(u0)
                self.student(u1)
            logits_m, feat_m = self.student(x_m, return_feature=True)
            logits_l = self.student(x_l)
        else:
            logits_l = self.student(x_l)
            logits_m, feat_m = self.student(x_m, return_feature=True)

        sup = supervised_loss(cfg, logits_l, y)
        pixel_l = pixel_consistency_loss(logits_l, deep["pseudo_l"]) + pixel_consistency_loss(logits_l, wide["pseudo_l"])
        pixel_u = pixel_consistency_loss(logits_m, deep["pseudo_m"]) + pixel_consistency_loss(logits_m, wide["pseudo_m"])
        image = semantic_sensitive_loss(logits_m, deep["logits_m"])
        region = content_aware_loss(feat_m, wide["feat_m"], cfg.region_grid)
        total = sup + pixel_l + pixel_u + cfg.lambda_image * image + cfg.lambda_region * region
        return {
            "loss": total,
            "sup": sup,
            "pixel_labeled": pixel_l,
            "pixel_unlabeled": pixel_u,
            "semantic_sensitive": image,
            "content_aware": region,
        }
