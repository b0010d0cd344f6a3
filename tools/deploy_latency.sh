#!/usr/bin/env bash
# README "Deploy" latency rows: fp32 and INT8 ONNX Runtime latency of the full-size students (random weights,
# Cityscapes' 19 classes and eval crop 800) at 512x512 and 1024x2048, batch 1, 2 threads, the runtimes alternating.
# INT8 is calibrated on the Cityscapes sample images (../shared/data/cityscapes_sample, or $CALIB).
#   bash tools/deploy_latency.sh [OUT_DIR]      -> OUT_DIR/<arch>.json (the export reports)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-deploy_latency}"
CALIB="${CALIB:-../shared/data/cityscapes_sample/leftImg8bit}"
mkdir -p "$OUT"
for arch in resnet18 mobilenetv2; do
  python -c "import sys, torch; from furnace.models import DeepLabV3Plus, save_segmentor
from furnace.models.weights import dataset_record
torch.manual_seed(0)
net = DeepLabV3Plus.from_arch('$arch', 19).eval()
save_segmentor(net, sys.argv[1], extra={**dataset_record('cityscapes', 19, '$arch'), 'eval': {'crop': 800, 'scales': [1.0], 'flip': False}})" "$OUT/$arch.pth"
  python -m furnace.tools.export "$OUT/$arch.pth" --out "$OUT/$arch.int8.onnx" --int8 --calib "$CALIB" \
      --calib-crops 32 --latency-sizes 512x512 1024x2048 --runs 5 --threads 2 --json "$OUT/$arch.json"
done
