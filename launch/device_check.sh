#!/usr/bin/env bash
# The accelerator check: the train step of model presets S and B (bf16 compute, the fused step)
# on ToyWorld text->image batches, one line each from gemb.bench.train: compile time, steps/s,
# examples/s, MFU over the chip's dense bf16 peak and per-device memory (XLA's compiled memory
# analysis). Under 5 minutes on one H100; docs/performance.md has the figures.
#
#   bash launch/device_check.sh
#   STEPS=2 S_BATCH=8 B_BATCH=8 PEAK_TFLOPS=0 bash launch/device_check.sh  # a dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS=${STEPS:-20}
S_BATCH=${S_BATCH:-1024}
B_BATCH=${B_BATCH:-512}
# H100 / H200 SXM dense bf16, NVIDIA's datasheet (H100 PCIe: 756); 0: the measured f32 peak.
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "note: no NVIDIA GPU visible; these are not the device check's figures" >&2
for preset in S B; do
  batch_size=${preset}_BATCH
  python -m gemb.bench.train --configs=configs/toyworld.py --preset="$preset" \
    --tasks=text_to_image --stages=prefinetune --batch_size="${!batch_size}" \
    --steps="$STEPS" --step_kinds=fused --peak_tflops="$PEAK_TFLOPS"
done
