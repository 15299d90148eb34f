#!/usr/bin/env bash
# Every GPU benchmark of the issue in one command (about 10 minutes on an H100); the tables go to stdout.
#   bash benchmarks/gpu.sh | tee benchmarks/out/gpu-$(date +%F).md
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# official defaults: 500 inversion steps, 50 sampling steps, 512x512x16; both half precisions; 1-4 clips per call
python benchmarks/bench_engine.py --full-size --device cuda --size 512 --frames 16 --inversion-steps 500 \
    --dtypes float16 bfloat16 --batches 1 2 3 4 --compile no
# torch.compile, float16, one and two clips per call
python benchmarks/bench_engine.py --full-size --device cuda --size 512 --frames 16 --inversion-steps 500 \
    --dtypes float16 --batches 1 2 --compile yes
