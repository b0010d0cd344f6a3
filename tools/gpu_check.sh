#!/usr/bin/env bash
# Prove every CUDA path of the project on a machine with one CUDA GPU, in one command (the default 480 s
# budget stops every step by 600 s; the first run, on an H200, is in the README). Everything goes into
# $OUT (or --out DIR): gpu_check.json, gpu_check.log, the test report, benchmark.json and the synthetic
# pipeline's results. Needs no network: tensorboardX and easydict come from tools/wheels/, the project
# runs from this checkout (PYTHONPATH).
#
#   OUT=/tmp/gpu bash tools/gpu_check.sh
#   bash tools/gpu_check.sh --device cpu --dry-run --out /tmp/dry     # the same steps on a CPU, tiny sizes
#
# All options: python -m furnace.tools.gpu_check --help
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m furnace.tools.gpu_check "$@"
