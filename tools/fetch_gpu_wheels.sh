#!/usr/bin/env bash
# Refresh tools/wheels/: the pure-Python wheels of the project's dependencies that a GPU machine
# without internet lacks (tensorboardX, easydict), for Python 3.12. Needs network; run it here, commit
# the wheels, and tools/gpu_check.sh installs them there with `pip install --no-index`.
#
#   bash tools/fetch_gpu_wheels.sh [PYTHON_VERSION]      (default 3.12)
set -euo pipefail
cd "$(dirname "$0")"
version="${1:-3.12}"
rm -f wheels/*.whl
python -m pip download --no-deps --python-version "$version" --only-binary=:all: -d wheels tensorboardX easydict
ls -l wheels
