"""INT8 files for ``python -m furnace.tools.export --int8``: ONNX Runtime static quantization (QDQ, per-channel
weights), calibrated on the network inputs evaluation would feed for the user's images.

Calibration inputs are the evaluator's: per image and scale of the recorded eval settings, the resized,
normalised, centre-padded image's sliding windows (and their mirror images when the file evaluates with
flip); ``crops`` of them, spread evenly over all, go through ONNX Runtime's calibrator one at a time. The
fp32 file is first prepared with ``onnxruntime.quantization.shape_inference.quant_pre_process``; nodes
matching the ``fp32_nodes`` patterns stay in fp32.
"""
import fnmatch
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..runtime.images import collect_inputs, read_image
from ..runtime.session import INPUT, META_PREFIX, OnnxModel
from ..runtime.sliding import EvalSettings, predict_logits, scaled_input, window_inputs
from ..runtime.windows import sliding_windows, window_stride
from ..utils import UserError

METHODS = ("minmax", "entropy", "percentile", "distribution")
TYPES = ("s8s8", "u8s8")  # activation type, weight type


@dataclass(frozen=True)
class QuantOptions:
    """How to quantize: calibration crops and method, activation/weight types (``s8s8``: int8 both;
    ``u8s8``: uint8 activations, int8 weights), 7-bit weights (``reduce_range``), and fnmatch patterns of
    the node names (as in the fp32 file, e.g. ``/classifier/*``) that stay fp32."""

    crops: int = 64
    method: str = "minmax"
    types: str = "u8s8"
    reduce_range: bool = True
    fp32_nodes: tuple = ()


# ----------------------------------------------------------------------------- calibration data


def calibration_images(inputs, limit: int) -> list[tuple[Path, tuple[int, int]]]:
    """``[(path, (H, W)), ...]``: up to ``limit`` readable images of ``inputs`` (files, folders, list files),
    spread evenly over them. Unreadable ones are named on stderr and skipped; UserError when none is left."""
    paths = collect_inputs(inputs, what="--calib INPUT")
    if len(paths) > limit:
        paths = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))]
    found, errors = [], []
    for path in paths:
        try:
            found.append((path, read_image(path).shape[:2]))
        except UserError as err:
            errors.append(str(err))
            print(f"warning: calibration image skipped: {err}", file=sys.stderr)
    if not found:
        raise UserError(f"--calib {' '.join(map(str, inputs))}: none of the {len(paths)} file(s) is a readable image "
                        f"({errors[0]}); give images like those the model will see (e.g. the val images)")
    return found


class CalibrationWindows:
    """ONNX Runtime's ``CalibrationDataReader`` over the network inputs evaluation feeds for ``images``
    (see the module doc): ``get_next()`` -> ``{"image": (1, 3, crop, crop) float32}`` or None at the end of
    the range set by ``set_range`` (default: all); ``len()`` = the number of crops."""

    def __init__(self, images: list[tuple[Path, tuple[int, int]]], settings: EvalSettings, crops: int):
        items = []
        for path, (h, w) in images:
            for scale in settings.scales:
                sh, sw = (h, w) if scale == 1.0 else (max(1, round(h * scale)), max(1, round(w * scale)))
                windows = ([None] if settings.crop <= 0
                           else sliding_windows(sh, sw, settings.crop, window_stride(settings.crop)))
                items += [(path, scale, win, flip) for win in windows for flip in ((False, True) if settings.flip
                                                                                   else (False,))]
        pick = np.unique(np.linspace(0, len(items) - 1, min(crops, len(items))).round().astype(int))
        self.items, self.crop = [items[i] for i in pick], settings.crop
        self._cached = (None, None)
        self.set_range(0, len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.items))

    def _input(self, path: Path, scale: float) -> np.ndarray:
        """The padded (3, H', W') input of ``path`` at ``scale`` (the last one is kept: items come in order)."""
        if self._cached[0] != (path, scale):
            x = scaled_input(read_image(path), scale)
            self._cached = ((path, scale), x if self.crop <= 0 else window_inputs(x, self.crop)[0])
        return self._cached[1]

    def get_next(self) -> dict | None:
        if self._next >= self._end:
            return None
        path, scale, window, flip = self.items[self._next]
        self._next += 1
        x = self._input(path, scale)
        if window is not None:
            y0, y1, x0, x1 = window
            x = x[:, y0:y1, x0:x1]
        return {INPUT: np.ascontiguousarray((x[..., ::-1] if flip else x)[None], np.float32)}


# ----------------------------------------------------------------------------- quantization


def _nodes_matching(model_path: Path, patterns) -> list[str]:
    """Names of the nodes of ``model_path`` that match any fnmatch pattern; UserError for a pattern that
    matches none."""
    import onnx

    names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    chosen = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise UserError(f"--fp32-nodes {pattern!r}: matches no node of the exported graph (names look like "
                            f"{names[0]!r}, {names[-1]!r}); give fnmatch patterns of node names")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def quantize_int8(fp32_path, out_path, reader: CalibrationWindows, options: QuantOptions) -> list[str]:
    """Write the INT8 (QDQ) file of ``fp32_path`` to ``out_path``, calibrated on ``reader``, with the fp32
    file's metadata plus ``int8`` (the options). Returns the names of the nodes kept in fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = dict(zip(METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile,
                                 CalibrationMethod.Distribution)))
    activation = QuantType.QInt8 if options.types == "s8s8" else QuantType.QUInt8
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        excluded = _nodes_matching(prepared, options.fp32_nodes)
        quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=options.reduce_range, activation_type=activation, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=methods[options.method],
                        # one crop per calibrator pass: the histogram methods keep every activation of a pass;
                        # a BatchNormalization left unfolded (after a Concat) has rank-1 scales: channel axis 0
                        extra_options={"CalibStridedMinMax": 1,
                                       "QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}})
    source, model = onnx.load(str(fp32_path)), onnx.load(str(out_path))
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    model.metadata_props.add(key=META_PREFIX + "int8", value=json.dumps({**asdict(options), "calib_crops": len(reader)}))
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return excluded


# ----------------------------------------------------------------------------- checks and timing


def argmax_agreement(fp32: OnnxModel, int8: OnnxModel, images, settings: EvalSettings) -> float:
    """Fraction of the pixels of ``images`` ([(path, (H, W)), ...]) whose predicted class (evaluation's rule,
    :func:`~furnace.runtime.sliding.predict_logits`) is the same with both files."""
    equal = total = 0
    for path, _ in images:
        image = read_image(path)
        a, b = (predict_logits(m.run, image, m.num_classes, settings).argmax(0) for m in (fp32, int8))
        equal, total = equal + int((a == b).sum()), total + a.size
    return equal / total


def paired_latency(runs: dict, x: np.ndarray, repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall ms of each ``runs[name](x)``, the runs alternating within each repeat (so that a busy
    shared CPU slows them alike)."""
    for _ in range(warmup):
        for fn in runs.values():
            fn(x)
    times = {name: [] for name in runs}
    for _ in range(max(1, repeats)):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}
