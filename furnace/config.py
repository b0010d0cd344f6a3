"""Experiment configuration: base recipes per dataset, command-line overrides, and validation.

An experiment folder's ``config.py`` starts from one of the base recipes here and overrides only what
differs, e.g.::

    from furnace.config import voc_config
    C = config = voc_config(__file__)
    C.method, C.arch = "mgd", "resnet18"
    C.labeled_ratio = 8

Values left empty (``""`` or ``0``) are *derived* by :func:`resolve_config` from the rest: the epoch
count from ``labeled_ratio``, split-list paths from the dataset layout, teacher files from
``DATA/model-weight/teachers``. The resolved config is what training uses and what checkpoints store.
"""
from __future__ import annotations

import ast
import copy
import difflib
import math
import os
from pathlib import Path
from typing import Any, Iterable

from easydict import EasyDict

from .runtime.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 - their home is the torch-free runtime
from .utils import IGNORE_INDEX, UserError

ARCHS = ("resnet18", "mobilenetv2", "resnet101", "wrn50_2")
DEFAULT_OUTPUT_STRIDE = {"resnet18": 16, "mobilenetv2": 32, "resnet101": 16, "wrn50_2": 16}  # the reference's
METHODS = ("supervised", "cps", "mgd")
DATASETS = ("voc", "city", "synthetic", "folder")


def base_config(exp_file: str | os.PathLike | None = None) -> EasyDict:
    """Every key a recipe may set, with the VOC defaults; dataset recipes override a few.

    ``exp_file`` is the experiment's ``config.py``; when given, the default ``data_root`` is the
    repository's ``DATA/`` found relative to it and ``output_dir`` is ``./output`` beside it. The
    environment variables ``DATA_ROOT`` and ``OUTPUT_DIR`` take precedence.
    """
    exp_dir, repo = _exp_dir_and_repo(exp_file)
    C = EasyDict()
    _experiment_keys(C, exp_dir)
    _data_keys(C, repo)
    _model_keys(C)
    _method_keys(C)
    _optimisation_keys(C)
    _logging_keys(C)
    _evaluation_keys(C)
    return C


def _exp_dir_and_repo(exp_file) -> tuple[Path, Path]:
    """The experiment folder (of ``exp_file``, else the working directory) and the repository holding it
    (the nearest folder above with ``furnace/``; the experiment folder itself when there is none)."""
    exp_dir = Path(exp_file).resolve().parent if exp_file else Path.cwd()
    return exp_dir, next((p for p in [exp_dir, *exp_dir.parents] if (p / "furnace").is_dir()), exp_dir)


def _experiment_keys(C: EasyDict, exp_dir: Path) -> None:
    """Experiment: name, seed, output folder."""
    C.exp_name = exp_dir.name
    C.seed = 12345
    C.output_dir = os.environ.get("OUTPUT_DIR", str(exp_dir / "output"))


def _data_keys(C: EasyDict, repo: Path) -> None:
    """Data: dataset, where it lives, classes, split lists, crops and scales, loader workers."""
    C.dataset = "voc"  # voc | city | synthetic | folder (your own data: data_root is its folder)
    C.data_root = os.environ.get("DATA_ROOT", str(repo / "DATA"))
    C.weight_dir = ""  # ImageNet and teacher files; "" -> <data_root>/model-weight
    C.num_classes = 21
    C.ignore_index = IGNORE_INDEX  # the void value in the label files (folder datasets; 255 for the others)
    C.labeled_ratio = 8  # 1/N of the training list is labeled: 16, 8, 4 or 2
    C.labeled_list = ""  # "" -> the dataset's standard split for labeled_ratio
    C.unlabeled_list = ""
    C.val_list = ""
    C.crop_size = 512
    C.train_scales = [0.5, 0.75, 1.0, 1.5, 1.75, 2.0]
    C.num_workers = 4
    C.check_data = True  # fast layout/list check before training starts


def _model_keys(C: EasyDict) -> None:
    """Model: the student architecture, output stride, widths, ImageNet initialisation."""
    C.arch = "resnet18"
    C.output_stride = 0  # 0 -> the architecture's default (16; MobileNet-v2 32)
    C.width_mult = 1.0  # < 1 only for small demo networks (synthetic data)
    C.head_channels = 256
    C.pretrained = "auto"  # "auto" -> DATA/model-weight/<arch>.pth; "" -> random init


def _method_keys(C: EasyDict) -> None:
    """Method: the supervised loss, CPS and MGD weights, the teachers, CutMix."""
    C.method = "mgd"  # supervised | cps | mgd
    C.sup_loss = "ce"  # ce | ohem
    C.ohem_thresh = 0.7
    C.ohem_min_kept = 50000
    C.lambda_cps = 1.0
    C.teacher_deep = ""  # "" -> DATA/model-weight/teachers/<dataset>_1-<N>_resnet101.pth
    C.teacher_wide = ""  # "" -> DATA/model-weight/teachers/<dataset>_1-<N>_wrn50_2.pth
    C.teacher_deep_arch = "resnet101"
    C.teacher_wide_arch = "wrn50_2"
    C.teacher_bn = "eval"  # eval (ours) | train (the reference's teacher BN behaviour)
    C.lambda_image = 0.004  # semantic-sensitive (image-level), mean over images
    C.lambda_region = 100.0  # content-aware (region-level)
    C.region_grid = 7
    # student BN running statistics: "trained" updates them with the passes that train (x_l, x_m);
    # "original" adds the original's no-grad passes on u0 and u1 (order u0, u1, x_m, x_l); losses are equal
    C.student_bn_updates = "trained"
    C.mgd_impl = "batched"  # batched (teacher passes batched) | reference (one teacher call per input)
    # torch.compile the teachers' batched pass, weights frozen as constants (inductor "freezing"):
    # compiling takes ~20-30 s at the first step (CPU); the teacher passes then run ~10% faster on a CPU
    C.compile_teachers = False
    C.export_teacher = ""  # cps runs: "" -> DATA/model-weight/teachers/<dataset>_1-<N>_<arch>.pth
    C.cutmix_boxes = 3
    C.cutmix_area = [0.25, 0.5]


def _optimisation_keys(C: EasyDict) -> None:
    """Optimisation (effective values for the *global* batch, whatever the process count)."""
    C.global_batch = 8
    C.micro_batch = 0  # largest per-process forward batch; 0 -> global_batch / processes
    C.lr = 0.0025
    C.momentum = 0.9
    C.weight_decay = 4e-4
    C.lr_power = 0.9
    C.warmup_iters = 0
    C.epochs = 0  # 0 -> epochs_per_ratio[labeled_ratio]
    C.epochs_per_ratio = {"16": 32, "8": 34, "4": 40, "2": 60}
    C.max_iters = 0  # > 0 stops early (smoke tests); the LR schedule still spans all epochs
    C.amp = "auto"  # auto (bf16 on CUDA if supported, else fp16; off on CPU) | bf16 | fp16 | none
    C.channels_last = False
    # SyncBatchNorm (CUDA, several processes) everywhere; false keeps backbone BN per process, as the
    # original's MobileNet-v2 students had it
    C.sync_bn_backbone = True
    C.compile = False
    C.device = "auto"  # auto | cuda | cpu


def _logging_keys(C: EasyDict) -> None:
    """Checkpoints and logging."""
    C.save_every_iters = 0  # also refresh latest.pth every N iterations (0 = once per epoch)
    C.snapshot_last = 14  # keep epoch-<e>.pth for the last N epochs ...
    C.snapshot_every = 0  # ... and every N-th epoch (0 = none)
    C.log_every = 20
    C.tb_images_every = 500  # prediction images to TensorBoard every N iterations (0 = never)
    C.eval_every_epochs = 0  # evaluate during training every N epochs (0 = after training only)


def _evaluation_keys(C: EasyDict) -> None:
    """Evaluation: sliding-window crop, scales, flip, batch, precision."""
    C.eval_crop = 512
    C.eval_scales = [1.0]
    C.eval_flip = False
    C.eval_batch = 4  # sliding windows per forward pass
    C.eval_amp = "none"  # none (fp32) | bf16 | fp16: autocast of evaluation on CUDA (training's amp does not apply)


def voc_config(exp_file=None) -> EasyDict:
    """PASCAL VOC 2012 (SBD-augmented): 21 classes, crop 512, global batch 8."""
    return base_config(exp_file)


def city_config(exp_file=None) -> EasyDict:
    """Cityscapes: 19 classes, crop 800, OHEM CE, λ_cps 5, wd 8e-4, 4x the VOC epochs."""
    C = base_config(exp_file)
    C.dataset = "city"
    C.num_classes = 19
    C.crop_size = 800
    C.eval_crop = 800
    C.sup_loss = "ohem"
    C.lambda_cps = 5.0
    C.weight_decay = 8e-4
    C.global_batch = 16
    C.epochs_per_ratio = {"16": 128, "8": 137, "4": 160, "2": 240}
    C.lambda_image = 0.002
    return C


def synthetic_config(exp_file=None) -> EasyDict:
    """The embedded synthetic dataset (VOC-shaped, made by ``furnace.datasets.make_synthetic``)."""
    C = base_config(exp_file)
    C.dataset = "synthetic"
    C.num_classes = 7
    C.pretrained = ""  # no ImageNet weights: every network starts from scratch
    # Small networks of the paper's families, so the whole method runs on a laptop CPU in minutes.
    C.width_mult = 0.25
    C.head_channels = 64
    C.crop_size = 64
    C.eval_crop = 64
    C.eval_batch = 16
    C.global_batch = 8
    # The students' lr (the teacher folders set their own). Supervised ResNet-18, 208 iterations, seeds 0-5
    # (600 val images): 0.015 -> 38.7 +- 1.1 mIoU, 0.03 -> 38.8 +- 3.1; the same mean and a third of the
    # spread, and the MGD student's lr (see its config), so every student trains at the same lr.
    C.lr = 0.015
    # CPS from random initialisation: early pseudo-labels are noise, and at weight 1 they held a
    # ResNet-18 at 34 mIoU against 46 supervised; at 0.25 CPS reached 48 (416 iterations).
    C.lambda_cps = 0.25
    C.weight_decay = 1e-4
    # The students' schedule; the teacher folders train longer (their epochs_per_ratio: 12 at 1/8), standing in
    # for the paper's strong, ImageNet-initialised teachers within the ten-minute CPU budget.
    C.epochs_per_ratio = {"16": 4, "8": 4, "4": 5, "2": 8}
    # At these sizes oneDNN runs channels_last convolutions faster on a CPU too: CPS teacher throughput
    # 10.2 -> 11.5 img/s (ResNet-101 family, one thread).
    C.channels_last = True
    C.num_workers = 0
    C.snapshot_last = 1
    C.log_every = 10
    C.tb_images_every = 0
    return C


def folder_config(exp_file=None) -> EasyDict:
    """Your own dataset in the ``folder`` layout (images/, labels/, classes.txt; see DATA/README.md): the
    VOC recipe at crop 512. ``data_root`` is the dataset folder (env ``DATA_ROOT``, default
    ``<repo>/DATA/custom``); ``num_classes`` comes from env ``NUM_CLASSES`` or the lines of classes.txt;
    ImageNet and teacher files live in ``<repo>/DATA/model-weight`` (env ``WEIGHT_DIR``)."""
    C = base_config(exp_file)
    _, repo = _exp_dir_and_repo(exp_file)
    C.dataset = "folder"
    C.data_root = os.environ.get("DATA_ROOT", str(repo / "DATA" / "custom"))
    C.weight_dir = os.environ.get("WEIGHT_DIR", str(repo / "DATA" / "model-weight"))
    C.num_classes = int(os.environ.get("NUM_CLASSES") or _count_classes(Path(C.data_root) / "classes.txt") or 2)
    C.ignore_index = int(os.environ.get("IGNORE_INDEX", IGNORE_INDEX))
    return C


def _count_classes(path: Path) -> int:
    """Non-blank lines of a classes.txt (0 when absent; the dataset check then names the file)."""
    try:
        return sum(1 for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    except OSError:
        return 0


# ----------------------------------------------------------------------------- resolution


def model_weight_dir(C) -> Path:
    return Path(C.get("weight_dir") or Path(C.data_root) / "model-weight")


def default_teacher_path(C, arch: str) -> str:
    """Where a CPS teacher run exports, and where a student run looks for, the ``arch`` teacher
    (a folder dataset is named by its folder: ``<name>_1-<N>_<arch>.pth``)."""
    name = Path(C.data_root).name if C.dataset == "folder" else C.dataset
    return str(model_weight_dir(C) / "teachers" / f"{name}_1-{C.labeled_ratio}_{arch}.pth")


def resolve_config(C: EasyDict, world_size: int = 1) -> EasyDict:
    """Return a copy of ``C`` with every derived value filled in (idempotent).

    Raises UserError for values that cannot work (unknown choice, a global batch that does not
    divide over ``world_size`` processes, a labeled_ratio without an epoch count).
    """
    C = copy.deepcopy(C)
    validate_config(C)
    if not C.epochs:
        key = str(C.labeled_ratio)
        if key not in C.epochs_per_ratio:
            raise UserError(
                f"config: labeled_ratio={C.labeled_ratio} has no entry in epochs_per_ratio "
                f"{dict(C.epochs_per_ratio)}; set epochs=<N> or add the ratio to epochs_per_ratio"
            )
        C.epochs = int(C.epochs_per_ratio[key])
    if not C.output_stride:
        C.output_stride = DEFAULT_OUTPUT_STRIDE[C.arch]
    if C.pretrained == "auto":
        C.pretrained = str(model_weight_dir(C) / f"{C.arch}.pth")
    if C.method == "mgd":
        C.teacher_deep = C.teacher_deep or default_teacher_path(C, C.teacher_deep_arch)
        C.teacher_wide = C.teacher_wide or default_teacher_path(C, C.teacher_wide_arch)
    if C.method == "cps":
        C.export_teacher = C.export_teacher or default_teacher_path(C, C.arch)
    C.micro_batch = batch_split(C, world_size)[0]
    return C


def batch_split(C, world_size: int = 1) -> tuple[int, int]:
    """``(micro_batch, accumulation)`` of ``C`` over ``world_size`` processes: the per-process share of
    ``global_batch`` runs as ``accumulation`` forward/backward passes of ``micro_batch`` samples
    (``micro_batch`` 0: one pass of the whole share). UserError when the numbers do not divide."""
    if C.global_batch % world_size:
        raise UserError(
            f"config: global_batch={C.global_batch} cannot be split over {world_size} processes; "
            f"use a multiple of {world_size} or another process count"
        )
    per_process = C.global_batch // world_size
    micro = C.get("micro_batch", 0) or per_process
    if per_process % micro:
        raise UserError(
            f"config: micro_batch={micro} does not divide the per-process batch {per_process} "
            f"(global_batch={C.global_batch} over {world_size} processes); choose a divisor of {per_process}"
        )
    return micro, per_process // micro


def accumulation_steps(C, world_size: int) -> int:
    """Forward/backward passes per optimizer step on each process (:func:`batch_split`)."""
    return batch_split(C, world_size)[1]


_CHOICES = {
    "dataset": DATASETS,
    "method": METHODS,
    "arch": ARCHS,
    "teacher_deep_arch": ARCHS,
    "teacher_wide_arch": ARCHS,
    "sup_loss": ("ce", "ohem"),
    "teacher_bn": ("eval", "train"),
    "mgd_impl": ("batched", "reference"),
    "student_bn_updates": ("trained", "original"),
    "amp": ("auto", "bf16", "fp16", "none"),
    "eval_amp": ("none", "bf16", "fp16"),
    "device": ("auto", "cuda", "cpu"),
}
_POSITIVE = ("num_classes", "crop_size", "global_batch", "eval_crop", "eval_batch", "region_grid", "lr")


def _unknown_key(key: str, known) -> UserError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see furnace/config.py for the keys"
    return UserError(f"config: unknown key {key!r}{hint}")


def validate_config(C) -> None:
    """Raise UserError naming the first key whose value cannot work, or a key no recipe has (a typo
    in an experiment's config.py would otherwise be silently ignored)."""
    known = base_config().keys()
    for key in C:
        if key not in known:
            raise _unknown_key(key, known)
    for key, choices in _CHOICES.items():
        if C[key] not in choices:
            raise UserError(f"config: {key}={C[key]!r} is not one of {', '.join(map(str, choices))}")
    for key in _POSITIVE:
        if not C[key] > 0:
            raise UserError(f"config: {key}={C[key]!r} must be positive")
    if not 0 <= C.ignore_index <= 255:
        raise UserError(f"config: ignore_index={C.ignore_index!r} must be a label value 0..255 above every class")
    if C.labeled_ratio < 1:
        raise UserError(f"config: labeled_ratio={C.labeled_ratio!r} must be >= 1 (1/N of the data is labeled)")
    if C.output_stride not in (0, 8, 16, 32):
        raise UserError(f"config: output_stride={C.output_stride!r} must be 0 (default), 8, 16 or 32")
    if not C.eval_scales or any(s <= 0 for s in C.eval_scales):
        raise UserError(f"config: eval_scales={C.eval_scales!r} must be a non-empty list of positive numbers")
    if C.compile_teachers and (C.method != "mgd" or C.mgd_impl != "batched" or C.teacher_bn != "eval"):
        raise UserError(f"config: compile_teachers=true compiles MGD's batched teacher pass; it needs method=mgd, "
                        f"mgd_impl=batched and teacher_bn=eval (got method={C.method}, mgd_impl={C.mgd_impl}, "
                        f"teacher_bn={C.teacher_bn}); set compile_teachers=false")
    if len(C.cutmix_area) != 2 or not 0 < C.cutmix_area[0] <= C.cutmix_area[1] <= 1:
        raise UserError(f"config: cutmix_area={C.cutmix_area!r} must be [low, high] with 0 < low <= high <= 1")


# ----------------------------------------------------------------------------- overrides


def _parse_value(key: str, text: str, current: Any) -> Any:
    def fail(kind):
        raise UserError(f"config: {key}={text!r} is not {kind} (current value {current!r})")

    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        fail("a boolean (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            fail("an integer")
    if isinstance(current, float):
        try:
            value = float(text)
        except ValueError:
            fail("a number")
        if not math.isfinite(value):
            fail("a finite number")
        return value
    if isinstance(current, (list, tuple, dict)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            fail(f"a Python literal {type(current).__name__}")
        if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(current, dict) and isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        fail(f"a {type(current).__name__}")
    return text


def apply_overrides(C: EasyDict, items: Iterable[str]) -> EasyDict:
    """Apply ``KEY=VALUE`` strings to ``C`` in place, each typed like the existing value.

    Unknown keys are rejected with the closest known keys.
    """
    for item in items:
        if "=" not in item:
            raise UserError(f"command line: {item!r} is not KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in C:
            raise _unknown_key(key, C.keys())
        C[key] = _parse_value(key, text, C[key])
    return C


def config_to_dict(C) -> dict:
    """Plain-dict copy of a config (for checkpoints and logs)."""
    return {k: (config_to_dict(v) if isinstance(v, dict) else copy.deepcopy(v)) for k, v in C.items()}
