"""An exported segmentor file (``python -m furnace.tools.export``) opened in ONNX Runtime, with its metadata.

The graph maps ``image`` (B, 3, H, W) float32, ImageNet-normalised RGB, to ``logits`` (B, C, H, W) at the
input size; the file's ``mgd_ssss.*`` metadata (JSON values) records ``arch``, ``num_classes``,
``class_names``, ``palette``, ``dataset`` and the evaluation settings ``eval`` = {crop, scales, flip}.
"""
import json
from pathlib import Path

import numpy as np

from ..utils import UserError

INPUT, OUTPUT = "image", "logits"
META_PREFIX = "mgd_ssss."


def _export_hint(path) -> str:
    return f"export one with `python -m furnace.tools.export CHECKPOINT --out {path}`"


class OnnxModel:
    """An exported file in ONNX Runtime on the CPU (``threads`` intra-op threads, 0 = its default).

    ``run(x)`` maps a (B, 3, H, W) float32 array to (B, C, H, W) float32 logits; ``meta`` is the file's
    metadata without the prefix, ``num_classes`` its class count. UserError naming the file when it is
    missing, not an ONNX model ONNX Runtime can load, or lacks the metadata.
    """

    def __init__(self, path, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: ONNX file not found; {_export_hint(path)}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT's optimiser notes are not the user's concern
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            reason = " ".join(str(err).split())[:160]
            raise UserError(f"{path}: not an ONNX model ONNX Runtime can load ({reason}); {_export_hint(path)}") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k[len(META_PREFIX):]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)}
        if "num_classes" not in self.meta:
            raise UserError(f"{path}: has no {META_PREFIX}num_classes metadata; {_export_hint(path)}")
        self.path, self.num_classes = path, int(self.meta["num_classes"])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]

    def classes(self) -> tuple[list[str], np.ndarray]:
        """``(class_names, palette)`` the file records ((C,) names, (C, 3) uint8 RGB)."""
        names, palette = self.meta.get("class_names"), self.meta.get("palette")
        if names is None or palette is None or len(names) != self.num_classes or len(palette) < self.num_classes:
            raise UserError(f"{self.path}: records no class names and palette for its {self.num_classes} classes; "
                            f"{_export_hint(self.path)}")
        return list(names), np.asarray(palette, np.uint8)
