#!/usr/bin/env bash
# Synthetic demo, MGD student: ResNet-18 distilled from the two CPS teachers.
# The whole demo (data, both teachers, baselines, MGD, results) is `python exp.synthetic/pipeline.py`;
# this runs one stage. DATA_ROOT must hold synthetic/ (python -m furnace.datasets.make_synthetic --root DATA/synthetic).
set -euo pipefail
cd "$(dirname "$0")"
export DATA_ROOT="${DATA_ROOT:-../../DATA}"
export OUTPUT_DIR="${OUTPUT_DIR:-./output}"
NGPUS="${NGPUS:-1}"
torchrun --nproc_per_node "$NGPUS" --master_port "${MASTER_PORT:-29500}" train.py --resume auto "$@"
torchrun --nproc_per_node "$NGPUS" --master_port "${MASTER_PORT:-29500}" eval.py -e last "$@"
