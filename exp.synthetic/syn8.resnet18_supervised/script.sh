#!/usr/bin/env bash
# Synthetic demo, baseline: ResNet-18 student trained on the labeled images only ("Sup.").
# The whole demo (data, both teachers, baselines, MGD, results) is `python exp.synthetic/pipeline.py`;
# this runs one stage. DATA_ROOT must hold synthetic/ (python -m furnace.datasets.make_synthetic --root DATA/synthetic).
# NGPUS, NNODES/NODE_RANK/MASTER_ADDR, SLURM and DRY_RUN=1: see ../../tools/launch.sh
set -euo pipefail
cd "$(dirname "$0")"
source ../../tools/launch.sh

launch train.py --resume auto "$@"
launch_local eval.py -e last "$@"
