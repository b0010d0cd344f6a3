#!/usr/bin/env bash
# Synthetic demo, MGD student: MobileNet-v2 distilled from the two CPS teachers (not a pipeline stage).
# The whole demo (data, both teachers, baselines, MGD, results) is `python exp.synthetic/pipeline.py`;
# this student trains from its teachers. DATA_ROOT must hold synthetic/ (python -m furnace.datasets.make_synthetic --root DATA/synthetic).
# NGPUS, NNODES/NODE_RANK/MASTER_ADDR, SLURM and DRY_RUN=1: see ../../tools/launch.sh
set -euo pipefail
cd "$(dirname "$0")"
source ../../tools/launch.sh
export DATA_ROOT="${DATA_ROOT:-../../DATA}"
export OUTPUT_DIR="${OUTPUT_DIR:-./output}"

launch train.py --resume auto "$@"
launch_local eval.py -e last "$@"
