"""MGD (SPEC §6): a lightweight student distilled from a frozen deep and a frozen wide teacher."""
from __future__ import annotations

import torch

from ..datasets.batch import IMAGE_L, IMAGE_U0, IMAGE_U1, LABEL_L, MASK_MIX
from ..losses import (
    content_aware_loss,
    cutmix_pseudo_label,
    hard_pseudo_label,
    mix_by_mask,
    pixel_consistency_loss,
    semantic_sensitive_loss,
)
from .base import Method, build_network, check_pretrained, load_teacher
from .teachers import FrozenTeacher


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
        loaded = {name: load_teacher(cfg, name) for name in ("teacher_deep", "teacher_wide")}
        for name, network in loaded.items():
            self.add_frozen(name, FrozenTeacher(network, batched=cfg.mgd_impl == "batched",
                                                bn_train=cfg.teacher_bn == "train"))
        if cfg.compile_teachers:
            self.compile_teachers()
        self.train()

    def eval_network(self):
        return self.student

    def compile_teachers(self, **compile_kwargs) -> None:
        """``cfg.compile_teachers``: each teacher's batched pass through ``torch.compile`` (see
        :meth:`FrozenTeacher.compile_frozen`)."""
        for teacher in self._frozen.values():
            teacher.compile_frozen(**compile_kwargs)

    @property
    def _teacher_calls(self) -> dict:
        """The compiled teacher calls by name (empty unless :meth:`compile_teachers` ran)."""
        return {name: t.compiled_call for name, t in self._frozen.items() if t.compiled_call is not None}

    def teacher_targets(self, x_l, u0, u1, x_m, mask):
        """Everything the student learns from the teachers, without gradient.

        Returns pseudo-labels (B, H, W) for the labeled and the CutMix images per teacher, T_D's logits
        of x_m and T_W's decoder feature of x_m. How the four inputs go through a teacher (one batched
        pass or one pass each) is the teacher's business (:class:`FrozenTeacher`). Every teacher output
        is computed once and feeds every loss that uses it.
        """
        targets = {}
        with torch.inference_mode():
            for name in ("teacher_deep", "teacher_wide"):
                logits, feat_m = self.frozen(name).infer((x_l, u0, u1, x_m))
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
        x_l, y = batch[IMAGE_L], batch[LABEL_L]
        u0, u1, mask = batch[IMAGE_U0], batch[IMAGE_U1], batch[MASK_MIX]
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

        sup = self.supervised_loss(logits_l, y)
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
