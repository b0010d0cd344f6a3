"""Experiment configuration: base recipes, the one preparation of a run's config, and overrides.

An experiment's ``config.py`` starts from a base recipe and overrides what differs (``C = config =
voc_config(__file__); C.method = "mgd"``). A run's config is prepared once, by :func:`prepare`: the
registered methods' keys join with their defaults, the environment (:data:`ENVIRONMENT`) and then
``KEY=VALUE`` override the file, everything is validated, and what a recipe leaves to be derived (``""`` /
``0``) is filled in by :func:`_derive`. The engine only reads prepared configs; checkpoints store them.
"""
import ast
import copy
import difflib
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from easydict import EasyDict

from .utils import IGNORE_INDEX, UserError

ARCHS = ("resnet18", "mobilenetv2", "resnet101", "wrn50_2")
DEFAULT_OUTPUT_STRIDE = {"resnet18": 16, "mobilenetv2": 32, "resnet101": 16, "wrn50_2": 16}  # the reference's
DATASETS = ("voc", "city", "synthetic", "folder")
# Environment variables a launcher sets, and the keys they override (after config.py, before KEY=VALUE).
ENVIRONMENT = {"DATA_ROOT": "data_root", "OUTPUT_DIR": "output_dir", "WEIGHT_DIR": "weight_dir",
               "NUM_CLASSES": "num_classes", "IGNORE_INDEX": "ignore_index"}
# Old key names still accepted, with a one-line notice.
RENAMED = {"mgd_impl": "teacher_impl"}

# name -> method class: a furnace.methods.Method subclass with a ``name`` registers itself when defined;
# its declarations (keys, choices, teachers, exports) extend the config.
METHODS: dict[str, type] = {}


def register_method(cls) -> None:
    METHODS[cls.name] = cls


def method_keys(first: str = "") -> dict:
    """Every registered method's config keys with their defaults: its ``keys``, and for each teacher it
    declares (``{key: arch}``) the file ``key`` ("" = the default teacher file) and ``<key>_arch``. A key that
    several methods declare has the default of method ``first`` if it is one of them, else of the first."""
    keys = {}
    for cls in sorted(METHODS.values(), key=lambda c: c.name != first):
        for key, arch in cls.teachers.items():
            keys.setdefault(key, "")
            keys.setdefault(f"{key}_arch", arch)
        if cls.exports:
            keys.setdefault(cls.exports, "")
        for key, value in cls.keys.items():
            keys.setdefault(key, value)
    return keys


# ----------------------------------------------------------------------------- base recipes


def base_config(exp_file=None) -> EasyDict:
    """Every key the engine, datasets and models read, with the VOC defaults (methods add theirs when
    the config is prepared). ``exp_file`` is the experiment's ``config.py``: relative ``data_root``,
    ``output_dir`` and ``weight_dir`` are taken relative to its folder (else the working directory, taken
    as the repository root)."""
    exp_dir = Path(exp_file).resolve().parent if exp_file else None
    data = "../../DATA" if exp_dir else "DATA"  # the repository's DATA/, from an experiment folder or the root
    C = EasyDict()
    # experiment
    C.exp_name = exp_dir.name if exp_dir else ""
    C.exp_dir = str(exp_dir) if exp_dir else ""
    C.seed = 12345
    C.output_dir = "output"
    # data
    C.dataset = "voc"  # voc | city | synthetic | folder (your own data: data_root is its folder)
    C.data_root = data
    C.weight_dir = ""  # ImageNet and teacher files; "" -> <data_root>/model-weight
    C.num_classes = 21
    C.ignore_index = IGNORE_INDEX  # the void value in the label files (folder datasets)
    C.labeled_ratio = 8  # 1/N of the training list is labeled: 16, 8, 4 or 2 (0: a folder dataset's own labels)
    C.labeled_list = ""  # "" -> the dataset's standard split for labeled_ratio
    C.unlabeled_list = ""
    C.val_list = ""
    C.crop_size = 512
    C.train_scales = [0.5, 0.75, 1.0, 1.5, 1.75, 2.0]
    C.cutmix_boxes = 3
    C.cutmix_area = [0.25, 0.5]
    C.num_workers = 4
    C.check_data = True  # fast layout/list check before training starts
    # model
    C.arch = "resnet18"
    C.output_stride = 0  # 0 -> the architecture's default (16; MobileNet-v2 32)
    C.width_mult = 1.0  # < 1 only for small demo networks (synthetic data)
    C.head_channels = 256
    C.pretrained = "auto"  # "auto" -> <weight_dir>/<arch>.pth; "" -> random init
    # method (each method adds its own keys, see furnace/methods/)
    C.method = "mgd"
    C.sup_loss = "ce"  # ce | ohem
    C.ohem_thresh = 0.7
    C.ohem_min_kept = 50000
    # frozen teachers, for methods that have them
    C.teacher_bn = "eval"  # eval (ours) | train (the reference's batch statistics)
    C.teacher_impl = "batched"  # batched (one BN-folded channels_last pass) | reference (one call per input)
    C.compile_teachers = False  # torch.compile the batched pass (weights as constants)
    # optimisation: effective values for the *global* batch, whatever the process count
    C.global_batch = 8
    C.micro_batch = 0  # largest per-process forward batch; 0 -> global_batch / processes
    C.lr = 0.0025
    C.momentum = 0.9
    C.weight_decay = 4e-4
    C.lr_power = 0.9
    C.warmup_iters = 0
    C.epochs = 0  # 0 -> epochs_per_ratio[labeled_ratio]; an epoch is max(labeled, unlabeled) // global_batch iterations
    C.epochs_per_ratio = {"16": 32, "8": 34, "4": 40, "2": 60}
    C.iters_per_ratio = {}  # {ratio: N}: train_iters for that labeled_ratio when neither epochs nor train_iters is set
    C.train_iters = 0  # > 0: the run's length in iterations instead of epochs (the LR schedule spans them)
    C.max_iters = 0  # > 0 stops early (smoke tests); the LR schedule still spans the whole run
    C.amp = "auto"  # auto: bf16 on GPUs that have it (else fp16) and on CPUs with AVX-512 BF16 / AMX | bf16 | fp16 | none
    C.channels_last = False
    C.sync_bn_backbone = True  # false: backbone BN per process, as the original's MobileNet-v2 students
    C.compile = False
    C.device = "auto"  # auto | cuda | cpu
    C.dist_timeout_s = 300  # a collective waiting longer on a peer fails (torchrun then restarts the group)
    # checkpoints and logging
    C.save_every_minutes = 5.0  # refresh latest.pth once this long passed since the last save (0: every epoch)
    C.save_every_iters = 0  # ... and every N iterations (0 = off); always at the end and on a stop signal
    C.snapshot_last = 14  # keep epoch-<e>.pth for the last N epochs ...
    C.snapshot_every = 0  # ... and every N-th epoch (0 = none)
    C.log_every = 20
    C.tb_images_every = 500  # prediction images to TensorBoard every N iterations (0 = never)
    C.eval_every_epochs = 0  # evaluate during training every N epochs (0 = after training only)
    # evaluation
    C.eval_crop = 512
    C.eval_scales = [1.0]
    C.eval_flip = False
    C.eval_batch = 4  # sliding windows per forward pass
    C.eval_amp = "none"  # none (fp32) | bf16 | fp16: autocast of evaluation (training's amp does not apply)
    return C


def voc_config(exp_file=None) -> EasyDict:
    """PASCAL VOC 2012 (SBD-augmented): 21 classes, crop 512, global batch 8."""
    return base_config(exp_file)


def city_config(exp_file=None) -> EasyDict:
    """Cityscapes: 19 classes, crop 800, OHEM CE, λ_cps 5, wd 8e-4, students' global batch 16, 4x the VOC epochs."""
    C = base_config(exp_file)
    C.update(dataset="city", num_classes=19, crop_size=800, eval_crop=800, sup_loss="ohem", lambda_cps=5.0,
             weight_decay=8e-4, global_batch=16, lambda_image=0.002,
             epochs_per_ratio={"16": 128, "8": 137, "4": 160, "2": 240})
    return C


def synthetic_config(exp_file=None) -> EasyDict:
    """The embedded synthetic dataset (``furnace.datasets.make_synthetic``): small networks of the paper's
    families trained from scratch, so that the whole method runs on a CPU in minutes (docs/notes.md)."""
    C = base_config(exp_file)
    C.update(dataset="synthetic", num_classes=7, pretrained="", width_mult=0.25, head_channels=64, crop_size=64,
             eval_crop=64, eval_batch=16, global_batch=8, lr=0.015, weight_decay=1e-4,
             lambda_cps=0.25,  # from random init, early pseudo-labels are noise
             epochs_per_ratio={"16": 16, "8": 16, "4": 20, "2": 32},  # the students'; teachers train 1.5x longer
             channels_last=True, num_workers=0, snapshot_last=1, log_every=10, tb_images_every=0)
    return C


def folder_config(exp_file=None) -> EasyDict:
    """Your own dataset in the ``folder`` layout (images/, labels/, classes.txt; see DATA/README.md), the VOC
    recipe: ``data_root`` is the dataset folder (default ``DATA/custom``), ``num_classes`` 0 counts the
    lines of its classes.txt, ImageNet and teacher files live in ``DATA/model-weight``. The natural partition
    (labeled_ratio 0: the images that have a label are the labeled ones) trains 40,000 iterations, about VOC
    1/8's 34 epochs x 1,157 = 39,338 at global batch 8; a simulated 1/N partition trains epochs_per_ratio."""
    C = base_config(exp_file)
    data = "../../DATA" if exp_file else "DATA"
    C.update(dataset="folder", data_root=f"{data}/custom", weight_dir=f"{data}/model-weight", num_classes=0,
             labeled_ratio=0, iters_per_ratio={"0": 40000})
    return C


# ----------------------------------------------------------------------------- preparation


def prepare(C, overrides: Iterable[str] = (), *, env: Mapping[str, str] | None = None,
            world_size: int = 1) -> EasyDict:
    """The config a run uses: a copy of ``C`` with the method keys' defaults, then ``env``'s
    :data:`ENVIRONMENT` variables and ``overrides`` (``KEY=VALUE``) applied, validated, and every
    derived value filled in for ``world_size`` processes. UserError names the first key that cannot work."""
    C = copy.deepcopy(C)
    for old, new in RENAMED.items():
        if old in C:
            C[new] = C.pop(old)
            _renamed_notice(old, new)
    for key, value in method_keys(_chosen_method(C, overrides)).items():
        C.setdefault(key, copy.deepcopy(value))
    _check_known(C)
    items = [f"{ENVIRONMENT[name]}={value}" for name, value in (env or {}).items()
             if name in ENVIRONMENT and value != ""]
    apply_overrides(C, [*items, *overrides])
    _check_choices(C)
    _derive(C, world_size)
    _check_values(C)
    return C


def _chosen_method(C, overrides) -> str:
    """The method a run will use (its keys' defaults come first): the last ``method=`` override, else the config's."""
    chosen = [item.split("=", 1)[1].strip().strip("'\"") for item in overrides
              if item.split("=", 1)[0].strip() == "method" and "=" in item]
    return chosen[-1] if chosen else C.get("method", "")


def _renamed_notice(old: str, new: str) -> None:
    print(f"note: config key {old} is now {new}; {old}= still works but will go", file=sys.stderr)


def _derive(C, world_size: int) -> None:
    """Fill in every value a recipe leaves to be derived (the one place that does)."""
    anchor, method = Path(C.exp_dir or "."), METHODS[C.method]
    files = ("pretrained", *method.teachers, *([method.exports] if method.exports else []))
    for key in ("data_root", "output_dir", "weight_dir", *files):
        if C[key] and C[key] != "auto":  # pretrained=auto: the arch's file in weight_dir, below
            C[key] = str((anchor / C[key]).resolve())
    C.weight_dir = C.weight_dir or str(Path(C.data_root) / "model-weight")
    if C.dataset == "folder" and not C.num_classes:
        C.num_classes = _count_classes(Path(C.data_root) / "classes.txt")
    if not C.epochs and not C.train_iters:
        ratio = str(C.labeled_ratio)
        if ratio not in C.iters_per_ratio and ratio not in C.epochs_per_ratio:
            raise UserError(f"config: labeled_ratio={C.labeled_ratio} has no entry in epochs_per_ratio "
                            f"{dict(C.epochs_per_ratio)}; set epochs=<N> (or train_iters=<N>) or add the ratio to "
                            f"epochs_per_ratio")
        if ratio in C.iters_per_ratio:
            C.train_iters = int(C.iters_per_ratio[ratio])
        else:
            C.epochs = int(C.epochs_per_ratio[ratio])
    C.output_stride = C.output_stride or DEFAULT_OUTPUT_STRIDE[C.arch]
    if C.pretrained == "auto":
        C.pretrained = str(Path(C.weight_dir) / f"{C.arch}.pth")
    for key in method.teachers:
        C[key] = C[key] or teacher_file(C, C[f"{key}_arch"])
    if method.exports:
        C[method.exports] = C[method.exports] or teacher_file(C, C.arch)
    C.micro_batch = batch_split(C, world_size)[0]


def _count_classes(path: Path) -> int:
    """Non-blank lines of a folder dataset's classes.txt; UserError naming it when it is missing or empty."""
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: dataset folder not found; point data_root (DATA_ROOT) at the folder holding "
                        f"images/, labels/ and {path.name}")
    try:
        count = sum(1 for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    except OSError as err:
        raise UserError(f"{path}: classes file cannot be read ({err.strerror or err}); write one class name per line "
                        f"in label-index order (or set num_classes / NUM_CLASSES and data_root / DATA_ROOT)") from None
    if not count:
        raise UserError(f"{path}: classes file is empty; write one class name per line in label-index order")
    return count


def teacher_file(C, arch: str) -> str:
    """Where a CPS run exports, and a student run looks for, the ``arch`` teacher of ``C``'s dataset and
    partition: ``<weight_dir>/teachers/<dataset>_1-<N>_<arch>.pth`` (a folder dataset: its folder name; its
    own labels, labeled_ratio 0: ``<folder>_natural_<arch>.pth``)."""
    name = Path(C.data_root).name if C.dataset == "folder" else C.dataset
    part = f"1-{C.labeled_ratio}" if C.labeled_ratio else "natural"
    return str(Path(C.weight_dir) / "teachers" / f"{name}_{part}_{arch}.pth")


def batch_split(C, world_size: int = 1) -> tuple[int, int]:
    """``(micro_batch, accumulation)``: each process's share of ``global_batch`` runs as ``accumulation``
    passes of ``micro_batch`` samples (``micro_batch`` 0: one pass). UserError when they do not divide."""
    if C.global_batch % world_size:
        raise UserError(f"config: global_batch={C.global_batch} cannot be split over {world_size} processes; "
                        f"use a multiple of {world_size} or another process count")
    per_process = C.global_batch // world_size
    micro = C.get("micro_batch", 0) or per_process
    if per_process % micro:
        raise UserError(f"config: micro_batch={micro} does not divide the per-process batch {per_process} "
                        f"(global_batch={C.global_batch} over {world_size} processes); choose a divisor of {per_process}")
    return micro, per_process // micro


# ----------------------------------------------------------------------------- validation

_CORE_KEYS = frozenset(base_config())
_CHOICES = {
    "dataset": DATASETS,
    "arch": ARCHS,
    "sup_loss": ("ce", "ohem"),
    "teacher_bn": ("eval", "train"),
    "teacher_impl": ("batched", "reference"),
    "amp": ("auto", "bf16", "fp16", "none"),
    "eval_amp": ("none", "bf16", "fp16"),
    "device": ("auto", "cuda", "cpu"),
}
_POSITIVE = ("num_classes", "crop_size", "global_batch", "eval_crop", "eval_batch", "lr")


def _unknown_key(key: str, known) -> UserError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see furnace/config.py and furnace/methods/ for the keys"
    return UserError(f"config: unknown key {key!r}{hint}")


def _check_known(C) -> None:
    """A key no recipe or method has is a typo that would otherwise be silently ignored."""
    known = _CORE_KEYS | set(method_keys())
    for key in C:
        if key not in known:
            if C.get("method") not in METHODS:  # most likely the key of that method, whose module was not imported
                raise UserError(f"config: unknown key {key!r}, and method={C.method!r} is not registered: a method of "
                                f"your own registers when its module is imported, e.g. from the experiment's config.py")
            raise _unknown_key(key, known)


def _check_choices(C) -> None:
    if C.method not in METHODS:
        raise UserError(f"config: method={C.method!r} is not one of {', '.join(METHODS)} (a method of your own "
                        f"registers when its module is imported, e.g. from the experiment's config.py)")
    choices = dict(_CHOICES)
    for key, arch in METHODS[C.method].teachers.items():
        choices[f"{key}_arch"] = ARCHS
    choices.update(METHODS[C.method].choices)
    for key, allowed in choices.items():
        if C[key] not in allowed:
            raise UserError(f"config: {key}={C[key]!r} is not one of {', '.join(map(str, allowed))}")


def _check_values(C) -> None:
    for key in _POSITIVE:
        if not C[key] > 0:
            raise UserError(f"config: {key}={C[key]!r} must be positive")
    if not 0 <= C.ignore_index <= 255:
        raise UserError(f"config: ignore_index={C.ignore_index!r} must be a label value 0..255 above every class")
    if C.labeled_ratio < 0 or (C.labeled_ratio == 0 and C.dataset != "folder"):
        raise UserError(f"config: labeled_ratio={C.labeled_ratio!r} must be >= 1 (1/N of the data is labeled), or 0 "
                        f"for a folder dataset (the images that have a label are the labeled ones)")
    if C.save_every_minutes < 0 or C.save_every_iters < 0:
        raise UserError(f"config: save_every_minutes={C.save_every_minutes!r} and save_every_iters="
                        f"{C.save_every_iters!r} must not be negative (0 turns the rule off)")
    if not C.dist_timeout_s > 0:
        raise UserError(f"config: dist_timeout_s={C.dist_timeout_s!r} must be positive (seconds a process waits "
                        "for the others in a collective)")
    if C.train_iters < 0 or C.epochs < 0:
        raise UserError(f"config: train_iters={C.train_iters!r} and epochs={C.epochs!r} must not be negative")
    if C.output_stride not in (8, 16, 32):
        raise UserError(f"config: output_stride={C.output_stride!r} must be 0 (default), 8, 16 or 32")
    for key in ("train_scales", "eval_scales"):
        if not C[key] or any(s <= 0 for s in C[key]):
            raise UserError(f"config: {key}={C[key]!r} must be a non-empty list of positive numbers")
    if C.compile_teachers and (not METHODS[C.method].teachers or C.teacher_impl != "batched" or C.teacher_bn != "eval"):
        raise UserError(f"config: compile_teachers=true compiles the frozen teachers' batched pass; it needs a "
                        f"method with teachers, teacher_impl=batched and teacher_bn=eval (got method={C.method}, "
                        f"teacher_impl={C.teacher_impl}, teacher_bn={C.teacher_bn}); set compile_teachers=false")
    if len(C.cutmix_area) != 2 or not 0 < C.cutmix_area[0] <= C.cutmix_area[1] <= 1:
        raise UserError(f"config: cutmix_area={C.cutmix_area!r} must be [low, high] with 0 < low <= high <= 1")
    METHODS[C.method].validate(C)


# ----------------------------------------------------------------------------- overrides


def _parse_value(key: str, text: str, current: Any) -> Any:
    def fail(kind):
        raise UserError(f"config: {key}={text!r} is not {kind} (current value {current!r})")

    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
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
        kind = "dict" if isinstance(current, dict) else "list"
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            fail(f"a Python literal {kind}")
        sequences = isinstance(current, (list, tuple)) and isinstance(value, (list, tuple))
        if sequences or (isinstance(current, dict) and isinstance(value, dict)):
            # the elements typed like the current ones: numbers stay numbers, whole numbers whole
            old, new = (list(v.values()) if isinstance(v, dict) else list(v) for v in (current, value))
            if old and all(_number(v) for v in old):
                whole = all(isinstance(v, int) for v in old)
                if not all(_number(v) and (isinstance(v, int) or not whole) for v in new):
                    fail(f"a {kind} of {'whole numbers' if whole else 'numbers'}")
            return {str(k): v for k, v in value.items()} if isinstance(value, dict) else list(value)
        fail(f"a {kind}")
    return text


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def apply_overrides(C: EasyDict, items: Iterable[str]) -> EasyDict:
    """Apply ``KEY=VALUE`` strings to ``C`` in place, each typed like the existing value; an unknown key
    is refused with the closest known ones."""
    for item in items:
        if "=" not in item:
            raise UserError(f"command line: {item!r} is not KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in RENAMED:
            _renamed_notice(key, RENAMED[key])
            key = RENAMED[key]
        if key not in C:
            raise _unknown_key(key, C.keys())
        C[key] = _parse_value(key, text, C[key])
    return C


def config_to_dict(C) -> dict:
    """Plain-dict copy of a config (for checkpoints and logs)."""
    return {k: (config_to_dict(v) if isinstance(v, dict) else copy.deepcopy(v)) for k, v in C.items()}
