#!/usr/bin/env bash
# Your own data (folder layout), deep teacher T_D: DeepLabv3+ ResNet-101 trained with CPS + CutMix.
# DATA_ROOT is the dataset folder (images/, labels/, classes.txt, train.txt, val.txt, splits/).
# The run ends by exporting the teacher file the student experiments load.
#
#   NGPUS=8 bash script.sh                                   # one machine, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash script.sh    # first of two machines (NODE_RANK=1 on the other)
#   bash script.sh labeled_ratio=16                          # extra arguments are config overrides
set -euo pipefail
cd "$(dirname "$0")"
export DATA_ROOT="${DATA_ROOT:-../../DATA/custom}"
export OUTPUT_DIR="${OUTPUT_DIR:-./output}"
NGPUS="${NGPUS:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NGPUS" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train.py --resume auto "$@"

# Evaluate every kept snapshot on the val set (one machine), report each, the last and the best.
if [ "$NODE_RANK" = 0 ]; then
  torchrun --nproc_per_node "$NGPUS" --master_port "$MASTER_PORT" eval.py -e all "$@"
fi
