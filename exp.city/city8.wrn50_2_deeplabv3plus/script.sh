#!/usr/bin/env bash
# Cityscapes, wide teacher T_W: DeepLabv3+ Wide-ResNet-50-2 trained with CPS + CutMix (OHEM).
# The run ends by exporting the teacher file the student experiments load.
#
#   NGPUS=8 bash script.sh                                   # one machine, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash script.sh    # first of two machines (NODE_RANK=1 on the other)
#   sbatch --nodes=2 --gpus-per-node=8 tools/slurm_example.sbatch exp.city/city8.wrn50_2_deeplabv3plus   # SLURM (from the repo root)
#   DRY_RUN=1 bash script.sh                                 # print the commands (check, torchrun) only
#   bash script.sh labeled_ratio=16                          # extra arguments are config overrides
set -euo pipefail
cd "$(dirname "$0")"
source ../../tools/launch.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

launch train.py --resume auto "$@"

# Evaluate every kept snapshot on the val set (one machine), report each, the last and the best.
if is_first_node; then
  launch_local eval.py -e all "$@"
fi
