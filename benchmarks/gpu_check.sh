#!/bin/sh
# The prepared GPU check of the segmentation stage: one short run on an H100 (about 3-5 minutes, most of it the
# 512x512x300 phantom and the warm-ups). Prints volumes/s, GPU utilisation, host<->device bytes per volume, peak GPU
# memory and the projected wall time of 25,692 volumes on 8 GPUs; the JSON goes to $OUT/bench_segment.json.
#
# The device image has torch, numpy, scipy, pyarrow, psutil and nvidia-ml-py (GPU utilisation) but neither MONAI nor
# nibabel: carry them as wheels (pure Python). Once, in the repository root on this machine:
#   echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"   # keep the wheels out of git
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2
# then run (device tool): command "sh benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540.
set -e
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
export PYTHONUNBUFFERED=1
python3 benchmarks/bench_segment.py --device cuda --size 512 512 300 --batch-sizes 1 4 --repeats 3 \
    --json-out "${OUT:-.}/bench_segment.json"
