"""Running an exported ``.onnx`` segmentor without PyTorch: numpy, OpenCV and onnxruntime only.

    python -m furnace.runtime.predict MODEL.onnx INPUT... --out DIR

The modules here are the one home of what the PyTorch side shares with a deployment: image decoding
and the ImageNet normalisation table (:mod:`.images`), the sliding-window geometry (:mod:`.windows`),
the colour maps and overlays (:mod:`.drawing`), an ONNX file with its metadata (:mod:`.session`) and
evaluation's prediction rule in numpy (:mod:`.sliding`). Nothing under ``furnace.runtime`` imports torch,
nor any furnace module that does.
"""
