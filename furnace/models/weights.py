"""Every way weights get into a network: ImageNet files (by name and shape, with a :class:`LoadReport`),
our segmentor files, and the original release's checkpoints (a strict check-and-copy: same names).

A segmentor file is ``{"format": "mgd-ssss.segmentor", "version": 2, "arch", "num_classes", "options":
{output_stride, width_mult, head_channels}, "state_dict", **extra}``, read with ``safe_load`` and written
with ``atomic_save``. Version 1 files (the decoder concatenated ``[reduce(low), ASPP]``, not the original's
``[ASPP, reduce(low)]``) are refused with the command that migrates them exactly (:func:`migrate_decoder_order`).
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..utils import UserError, atomic_save, safe_load
from .backbones import ARCHS
from .deeplabv3plus import DeepLabV3Plus

SEGMENTOR_FORMAT = "mgd-ssss.segmentor"
SEGMENTOR_VERSION = 2
# The first version whose decoder concatenates [ASPP, reduce(low)] (SPEC §4); older files need migrating.
DECODER_ORDER_VERSION = 2
_MIGRATE_HINT = "python -m furnace.tools.migrate_checkpoint"
_RESERVED = ("format", "version", "arch", "num_classes", "options", "state_dict")

BRANCHES = ("branch1", "branch2", "branch3")
# Tensors the original networks carried but never used in forward.
OFFICIAL_UNUSED = {
    "mobilenetv2": ("backbone.classifier.1.weight", "backbone.classifier.1.bias"),
    "wrn50_2": ("backbone.fc.weight", "backbone.fc.bias"),
}
_CONVERT_HINT = "python -m furnace.tools.convert_official SRC DST --arch ARCH --branch branch1"
_LIST_LIMIT = 20


def _is_counter(name: str) -> bool:
    # BN's num_batches_tracked: a step counter that changes no output; older files lack it
    return name.endswith("num_batches_tracked")


def _listing(items, limit: int = _LIST_LIMIT) -> str:
    items = [str(i) for i in items]
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _shape(t) -> list:
    return list(t.shape)


def _unwrap(model: nn.Module) -> nn.Module:
    """The DeepLabV3Plus inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


# ============================================================================ ImageNet weights


@dataclass
class LoadReport:
    """What :func:`load_imagenet_weights` did, by backbone-relative name (BN step counters not listed):
    ``missing`` (ours, not in the file: random), ``unexpected`` (the file's, not ours: ignored), ``mismatched``
    (``(name, file_shape, our_shape)``: random)."""

    path: str
    arch: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, list, list]] = field(default_factory=list)
    deep_stem_random: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing and not self.mismatched

    def __str__(self) -> str:
        lines = [f"ImageNet weights {self.path} -> {self.arch or 'backbone'}: {len(self.loaded)} tensors loaded, "
                 f"{len(self.missing)} missing (stay random), {len(self.mismatched)} shape-mismatched (stay random), "
                 f"{len(self.unexpected)} unexpected (ignored)"]
        groups: Dict[str, int] = {}
        for name in self.loaded:
            parts = name.split(".")
            key = ".".join(parts[:2]) if parts[0] == "features" else parts[0]
            groups[key] = groups.get(key, 0) + 1
        lines.append("  loaded: " + (", ".join(f"{k} ({n})" for k, n in groups.items()) or "nothing"))
        if self.missing:
            lines.append("  missing: " + _listing(self.missing))
        if self.mismatched:
            lines.append("  shape-mismatched: " + _listing(f"{n} file {f} vs ours {o}" for n, f, o in self.mismatched))
        if self.unexpected:
            lines.append("  unexpected: " + _listing(self.unexpected))
        if self.deep_stem_random:
            lines.append("  The deep stem conv1.* stays randomly initialised, as in the reference "
                         "(the file has no 3-conv deep stem of these shapes).")
        return "\n".join(lines)


def _state_dict_of(obj, path) -> Dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded file: a bare state dict, or one under 'state_dict' / 'model'."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UserError(f"{path}: holds no state dict (no tensors found at the top level or under "
                        f"'state_dict' / 'model'); expected a torchvision or timm ImageNet weight file")
    return tensors


def _strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


_TIMM_MBV2_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_TIMM_MBV2_IR = {"conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1",
                 "conv_pwl": "conv.2", "bn3": "conv.3"}
_TIMM_MBV2_DS = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}
_TIMM_MBV2_TOP = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": "features.18.0",
                  "bn2": "features.18.1", "classifier": "classifier.1"}


def _timm_mobilenetv2_to_torchvision(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A timm ``mobilenetv2_*`` state dict in torchvision's names: timm numbers blocks per stage
    (``blocks.<stage>.<i>``), torchvision consecutively from ``features.1``; inside a block they map 1:1."""
    blocks = sorted({(int(m[1]), int(m[2])) for m in map(_TIMM_MBV2_BLOCK.match, state) if m})
    index = {b: i + 1 for i, b in enumerate(blocks)}
    out = {}
    for name, tensor in state.items():
        m = _TIMM_MBV2_BLOCK.match(name)
        if m:
            block = (int(m[1]), int(m[2]))
            module, _, leaf = m[3].partition(".")
            expands = f"blocks.{block[0]}.{block[1]}.conv_pwl.weight" in state
            table = _TIMM_MBV2_IR if expands else _TIMM_MBV2_DS
            new = f"features.{index[block]}.{table[module]}.{leaf}" if module in table else name
        else:
            module, _, leaf = name.partition(".")
            new = f"{_TIMM_MBV2_TOP[module]}.{leaf}" if module in _TIMM_MBV2_TOP else name
        out[new] = tensor
    return out


def _match_tensors(backbone: nn.Module, state: dict, report: LoadReport) -> dict:
    """The tensors of ``state`` that ``backbone`` takes (same name, same shape), with the BN step counters
    of the loaded BNs; ``report`` gets the loaded, missing, mismatched and unexpected names and whether
    a deep stem stays random."""
    ours = backbone.state_dict()
    to_load = {}
    for name, tensor in ours.items():
        if _is_counter(name):
            continue
        if name not in state:
            report.missing.append(name)
        elif state[name].shape != tensor.shape:
            report.mismatched.append((name, _shape(state[name]), _shape(tensor)))
        else:
            to_load[name] = state[name]
            report.loaded.append(name)
    # BN step counters travel with their BN's statistics and are not reported on their own
    for name in ours:
        sibling = name[: -len("num_batches_tracked")] + "running_mean"
        if _is_counter(name) and sibling in to_load and name in state and state[name].dim() == 0:
            to_load[name] = state[name]
    report.unexpected = [k for k in state if k not in ours]
    stem_names = [n for n in ours if n.startswith("conv1.")]
    report.deep_stem_random = bool(getattr(backbone, "deep_stem", False)) and not any(n in to_load for n in stem_names)
    return to_load


def _raise_incomplete(report: LoadReport, path, arch: str) -> None:
    """The UserError of strict loading: the missing and shape-mismatched tensors of ``report``."""
    problems = []
    if report.missing:
        problems.append(f"missing {_listing(report.missing)}")
    if report.mismatched:
        shapes = (f"{n} file {f} vs ours {o}" for n, f, o in report.mismatched)
        problems.append("shape-mismatched " + _listing(shapes))
    raise UserError(f"{path}: strict ImageNet loading into {arch or 'the backbone'} failed: {'; '.join(problems)}. "
                    "Use a file with the same layout, or strict=False to keep those tensors random")


STEM_TENSORS = ("conv1.", "bn1.", "layer1.0.conv1.", "layer1.0.downsample.0.")


def load_imagenet_weights(model_or_backbone: nn.Module, path, strict: bool = False,
                          verbose: bool = False) -> LoadReport:
    """Copy the ImageNet weights of the local file ``path`` (a torchvision or timm state dict, also under
    ``'state_dict'`` / ``'model'``, ``module.`` / ``backbone.`` prefixes stripped) into the backbone of
    ``model_or_backbone`` by name and shape; the rest stays random and is listed in the returned report
    (printed when ``verbose``): with torchvision's ResNet-18/101 files the deep stem, as in the reference.
    UserError naming the file when it cannot be read, when a tensor beyond the stem is missing or of another
    shape (another network's file), or with ``strict`` when any is. Never downloads."""
    model = _unwrap(model_or_backbone)
    backbone = model.backbone if isinstance(model, DeepLabV3Plus) else model
    arch = getattr(model, "arch", "") or getattr(backbone, "arch", "")
    state = _strip_prefixes(_state_dict_of(safe_load(path), path))
    if "conv_stem.weight" in state and any(k.startswith("blocks.") for k in state):
        state = _timm_mobilenetv2_to_torchvision(state)

    report = LoadReport(path=str(path), arch=arch)
    to_load = _match_tensors(backbone, state, report)
    if not to_load:
        raise UserError(f"{path}: none of its {len(state)} tensors matches the {arch or 'backbone'} backbone by name "
                        f"and shape (its names look like {_listing(list(state)[:5])}); is it the ImageNet file of this "
                        f"architecture? Use a torchvision or timm state dict, or pretrained='' for random init")
    if strict and not report.complete:
        _raise_incomplete(report, path, arch)
    # only the deep stem (and, behind ResNet-101's 128-channel one, layer1.0's inputs) may differ from a
    # torchvision file; anything else missing or reshaped is the file of another network
    foreign = [n for n in [*report.missing, *(m[0] for m in report.mismatched)] if not n.startswith(STEM_TENSORS)]
    if foreign:
        raise UserError(f"{path}: not the ImageNet file of {arch or 'this backbone'}: {len(foreign)} backbone tensors "
                        f"beyond the stem are missing from it or of another shape ({_listing(foreign)}); give the "
                        f"torchvision or timm file of {arch or 'the backbone'}, or pretrained='' for random init")
    backbone.load_state_dict(to_load, strict=False)
    if verbose:
        print(report)
    return report


# ============================================================================ segmentor files


def save_segmentor(model: nn.Module, path, extra: Optional[dict] = None) -> None:
    """Write ``model`` (a DeepLabV3Plus, DDP/compile wrappers unwrapped) as a segmentor file, atomically;
    ``extra`` adds top-level keys other than the format's. A failed write raises UserError naming ``path``
    and keeps the previous file."""
    model = _unwrap(model)
    if not isinstance(model, DeepLabV3Plus) or model.arch not in ARCHS:
        raise TypeError("save_segmentor expects a DeepLabV3Plus made by furnace.models.build_model")
    extra = dict(extra or {})
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"save_segmentor: extra keys {clash} are reserved by the file format")
    obj = {"format": SEGMENTOR_FORMAT, "version": SEGMENTOR_VERSION, "arch": model.arch,
           "num_classes": int(model.num_classes), "options": dict(model.build_options),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    try:
        atomic_save(obj, path)
    except OSError as err:
        raise UserError(f"{path}: writing the segmentor file failed ({type(err).__name__}: {err}); the previous "
                        "file there, if any, is unchanged. Free disk space or fix permissions") from err


def segmentor_record(cfg, layout=None) -> dict:
    """What a segmentor file records about its data so that it can be used on its own (predict, export):
    ``dataset``, ``class_names``, ``palette``, ``ignore_index`` and ``eval`` {crop, scales, flip}; names and
    palette from ``layout`` (default: the config's)."""
    from ..datasets.layouts import classes_and_palette, classes_record, layout_of

    names, palette = classes_and_palette(layout if layout is not None else layout_of(cfg), cfg.num_classes)
    return {"dataset": cfg.dataset, **classes_record(names, palette), "ignore_index": int(cfg.ignore_index),
            "eval": {"crop": int(cfg.eval_crop), "scales": [float(s) for s in cfg.eval_scales],
                     "flip": bool(cfg.eval_flip)}}


def recorded_classes(meta: dict) -> tuple:
    """``(class_names, palette)`` a file's metadata (:func:`read_segmentor_meta`, or an ONNX file's) gives;
    a file without them (older ones, converted ones without --dataset) gets those of the dataset with that
    many classes (VOC 21, Cityscapes 19, synthetic 7), else generic names and the VOC colours."""
    import numpy as np

    from ..datasets.layouts import LAYOUTS, classes_and_palette

    n = int(meta["num_classes"])
    names, palette = meta.get("class_names"), meta.get("palette")
    if names is not None and len(names) == n and palette is not None and len(palette) >= n:
        return list(names), np.asarray(palette, np.uint8)
    known = [meta.get("dataset")] + [k for k in LAYOUTS if k != meta.get("dataset")]
    matching = [LAYOUTS[key] for key in known if key in LAYOUTS and LAYOUTS[key].num_classes == n]
    return classes_and_palette(matching[0] if matching else None, n)


def _looks_official(obj) -> bool:
    state = obj.get("model") if isinstance(obj, dict) else None
    return isinstance(state, dict) and any(str(k).split(".")[0] in BRANCHES for k in state)


def _check_segmentor(obj, path) -> dict:
    """The file's dict when it is one of our segmentor files, else a UserError saying what it is."""
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a segmentor file (it holds a {type(obj).__name__}, not a dict)")
    fmt = obj.get("format")
    if fmt != SEGMENTOR_FORMAT:
        if _looks_official(obj):
            what = "an original MGD/CPS release checkpoint ({'model': branch1.*, branch2.* ...})"
        elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            what = "a bare state dict"
        elif fmt is not None:
            what = f"a file of format {fmt!r}"
        else:
            what = f"a dict with keys {_listing(list(obj)[:8])}"
        raise UserError(f"{path}: not a {SEGMENTOR_FORMAT} file; it is {what}. Original release checkpoints are "
                        f"converted once with `{_CONVERT_HINT}`; training runs write segmentor files to "
                        f"<output_dir>/checkpoints/epoch-<e>.pth (latest.pth is the training state, not a segmentor)")
    version = obj.get("version")
    if not isinstance(version, int) or version > SEGMENTOR_VERSION:
        raise UserError(f"{path}: segmentor file version {version!r} is newer than this furnace reads "
                        f"({SEGMENTOR_VERSION}); update the project")
    if version < DECODER_ORDER_VERSION:
        raise UserError(old_decoder_order_message(path, "segmentor file", version))
    for key in ("arch", "num_classes", "options", "state_dict"):
        if key not in obj:
            raise UserError(f"{path}: segmentor file lacks its {key!r} entry (damaged or hand-made file)")
    if obj["arch"] not in ARCHS:
        raise UserError(f"{path}: unknown arch {obj['arch']!r} (known: {', '.join(ARCHS)})")
    return obj


def old_decoder_order_message(path, what: str, version) -> str:
    """The one-line refusal of a file written before the decoder's channel order was fixed."""
    return (f"{path}: {what} version {version} was written when the decoder concatenated its channels in the "
            f"other order, so its weights would predict garbage now; migrate it exactly with "
            f"`{_MIGRATE_HINT} {path} NEW.pth` (or retrain)")


def _swap_decoder_input(weight: torch.Tensor) -> torch.Tensor:
    """``last_conv.0.weight`` (out, out + r, k, k) with input channels ``[r reduced, out ASPP]`` ->
    ``[out ASPP, r reduced]``; the decoder's ASPP width equals last_conv.0's output width."""
    reduced = weight.shape[1] - weight.shape[0]
    if weight.dim() != 4 or reduced <= 0:
        raise ValueError(f"not a decoder input convolution: shape {list(weight.shape)}")
    return torch.cat([weight[:, reduced:], weight[:, :reduced]], dim=1)


DECODER_INPUT_CONV = "head.last_conv.0.weight"


def migrate_decoder_order(state: Dict[str, torch.Tensor], momentum: Optional[Dict] = None) -> List[str]:
    """Permute, in place, every ``*head.last_conv.0.weight`` of ``state`` (and the matching momentum buffers
    of an optimizer ``state``, recognised by that shape, which only the decoder's input conv has) from the
    version-1 channel order to the current one: the network computes what it computed. Returns the names."""
    names = [k for k in state if k == DECODER_INPUT_CONV or k.endswith("." + DECODER_INPUT_CONV)]
    if not names:
        raise ValueError(f"no {DECODER_INPUT_CONV} tensor found")
    shapes = {tuple(state[k].shape) for k in names}
    for k in names:
        state[k] = _swap_decoder_input(state[k])
    if momentum:
        buffers = [v for v in momentum.values()
                   if isinstance(v, dict) and torch.is_tensor(v.get("momentum_buffer"))
                   and tuple(v["momentum_buffer"].shape) in shapes]
        if len(buffers) != len(names):
            raise ValueError(f"{len(buffers)} optimizer buffers have a decoder-input shape, expected {len(names)}")
        for v in buffers:
            v["momentum_buffer"] = _swap_decoder_input(v["momentum_buffer"])
    return names


def _build_from_meta(obj, path) -> DeepLabV3Plus:
    try:
        return DeepLabV3Plus.from_arch(obj["arch"], int(obj["num_classes"]), **dict(obj["options"]))
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: cannot rebuild the network from arch={obj['arch']!r}, "
                        f"num_classes={obj['num_classes']!r}, options={obj['options']!r} ({err})") from err


def _check_tensors(model: nn.Module, state: Dict[str, torch.Tensor], where: str, unused=()) -> List[str]:
    """Strict name/shape comparison; returns the file's tensors in ``unused``, raises UserError otherwise."""
    ours = model.state_dict()
    dropped = [k for k in state if k in unused and k not in ours]
    unknown = [k for k in state if k not in ours and k not in unused]
    mismatched = [f"{k} file {_shape(state[k])} vs ours {_shape(ours[k])}"
                  for k in state if k in ours and state[k].shape != ours[k].shape]
    missing = [k for k in ours if k not in state and not _is_counter(k)]
    if unknown or mismatched or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unknown:
            parts.append(f"{len(unknown)} unknown: {_listing(unknown)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape-mismatched: {_listing(mismatched)}")
        raise UserError(f"{where}: tensors do not match the network — " + "; ".join(parts))
    return dropped


def read_segmentor_meta(path) -> dict:
    """Every top-level entry of a segmentor file but the state dict; UserError as for :func:`load_segmentor`."""
    obj = _check_segmentor(safe_load(path), path)
    return {k: v for k, v in obj.items() if k != "state_dict"}


def load_segmentor(path, map_location="cpu") -> DeepLabV3Plus:
    """The network the segmentor file ``path`` records, weights loaded strictly, in eval mode on
    ``map_location``; UserError naming ``path`` when it is missing, unreadable, not a segmentor file (an
    original release gets the convert_official command) or its tensors do not match."""
    obj = _check_segmentor(safe_load(path), path)
    model = _build_from_meta(obj, path)
    state = obj["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: its 'state_dict' entry is a {type(state).__name__}, not a dict")
    _check_tensors(model, state, str(path))
    model.load_state_dict(state, strict=False)  # strictness checked above; counters may be absent
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


# ============================================================================ official releases


def guess_official_arch(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The arch an original network's state dict (``backbone.*``, no branch prefix) belongs to, or None."""
    if "backbone.features.0.0.weight" in state:
        return "mobilenetv2"
    stem = state.get("backbone.conv1.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[-1] == 7:
        return "wrn50_2"
    stem = state.get("backbone.conv1.0.weight")
    if stem is not None:
        return {32: "resnet18", 64: "resnet101"}.get(int(stem.shape[0]))
    return None


def official_branch(obj, src, branch: str) -> Dict[str, torch.Tensor]:
    """The tensors of network ``branch`` of an original release (``{'model': sd}`` or a bare ``sd``),
    with the ``<branch>.`` prefix removed."""
    if branch not in BRANCHES:
        raise UserError(f"branch {branch!r} is not one of {', '.join(BRANCHES)}")
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not state:
        raise UserError(f"{src}: expected an original checkpoint {{'model': state_dict}} or a bare state dict")
    prefix = branch + "."
    picked = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not picked:
        found = sorted({str(k).split(".")[0] for k in state})
        raise UserError(f"{src}: no tensors under {prefix!r}; top-level prefixes in the file: {_listing(found)}. "
                        f"MGD student files: branch1 = student, branch2 = wide teacher (wrn50_2), "
                        f"branch3 = deep teacher (resnet101); CPS teacher files: branch1")
    bad = [k for k, v in picked.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{src}: entries under {prefix!r} that are not tensors: {_listing(bad)}")
    return picked


def official_to_segmentor(state: Dict[str, torch.Tensor], arch: str, num_classes: Optional[int] = None,
                          where: str = "checkpoint") -> Tuple[DeepLabV3Plus, List[str]]:
    """``(network in eval mode, dropped names)``: ``arch`` at the reference layout with one original network's
    ``state`` loaded strictly (every tensor ours or in ``OFFICIAL_UNUSED[arch]``, none of ours missing); the class
    count is the classifier's (``num_classes``, when given, must agree)."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r} is not one of {', '.join(ARCHS)}")
    cls = state.get("classifier.weight")
    if cls is None or cls.dim() != 4:
        raise UserError(f"{where}: no 'classifier.weight' conv tensor; not a DeepLabv3+ of the original project")
    found = int(cls.shape[0])
    if num_classes is not None and num_classes != found:
        raise UserError(f"{where}: --num-classes {num_classes} but the checkpoint's classifier has {found} classes")
    model = DeepLabV3Plus.from_arch(arch, found)
    try:
        dropped = _check_tensors(model, state, where, unused=OFFICIAL_UNUSED.get(arch, ()))
    except UserError as err:
        guess = guess_official_arch(state)
        hint = f" The tensors look like a {guess} network: try --arch {guess}." if guess and guess != arch else ""
        raise UserError(f"{err} (converting as --arch {arch}).{hint}") from None
    model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False)
    return model.eval(), dropped


def dataset_record(dataset: str, num_classes: int, where: str) -> dict:
    """The ``dataset`` / ``class_names`` / ``palette`` entries of a segmentor file for a known dataset
    (voc, city or cityscapes); UserError when its class count differs from the network's."""
    from ..datasets.layouts import LAYOUTS, classes_record

    key = "city" if dataset == "cityscapes" else dataset
    layout = LAYOUTS.get(key)
    if layout is None:
        raise UserError(f"--dataset {dataset!r} is not one of voc, cityscapes, synthetic")
    if layout.num_classes != num_classes:
        raise UserError(f"{where}: the network has {num_classes} classes but --dataset {dataset} has "
                        f"{layout.num_classes}; pick the dataset the checkpoint was trained on")
    return {"dataset": key, **classes_record(layout.class_names, layout.palette)}


def convert_official(src, dst, arch: str, branch: str = "branch1", num_classes: Optional[int] = None,
                     dataset: Optional[str] = None) -> dict:
    """Convert network ``branch`` of the original release file ``src`` into our segmentor file ``dst`` (exactly
    the original's logits); ``dataset`` (voc | cityscapes) records its classes and palette. Returns
    ``{"arch", "num_classes", "tensors", "dropped", "dst"}``; UserError naming what does not fit."""
    if Path(dst).resolve() == Path(src).resolve():
        raise UserError(f"{dst}: the destination is the source file; write the converted file elsewhere")
    state = official_branch(safe_load(src), src, branch)
    model, dropped = official_to_segmentor(state, arch, num_classes, where=f"{src} [{branch}]")
    extra = {"converted_from": os.path.basename(str(src)), "branch": branch}
    if dataset:
        extra.update(dataset_record(dataset, model.num_classes, f"{src} [{branch}]"))
    save_segmentor(model, dst, extra=extra)
    return {"arch": arch, "num_classes": model.num_classes, "tensors": len(state) - len(dropped),
            "dropped": dropped, "dst": str(dst)}
