#!/usr/bin/env bash
# Train gemb on a Cloud TPU VM pod slice: create it, copy this checkout to every worker, install,
# and run the same command on all workers (JAX finds the other hosts itself on Cloud TPU).
#
#   TPU_NAME=gemb-v5e ZONE=us-central2-b ACCELERATOR=v5litepod-32 \
#   CONFIG=configs/scale.py:B WORKDIR=gs://my-bucket/runs/b1 bash launch/tpu_pod.sh [create]
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR=${ACCELERATOR:-v5litepod-32}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
cd "$(dirname "$0")/.."

if [ "${1:-}" = "create" ]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi

tar czf /tmp/gemb.tgz --exclude=.venv --exclude=runs --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/gemb.tgz "$TPU_NAME":~/gemb.tgz --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; mkdir -p ~/gemb && tar xzf ~/gemb.tgz -C ~/gemb && cd ~/gemb &&
  python3 -m venv .venv && . .venv/bin/activate &&
  pip install -q -r requirements.txt 'jax[tpu]==$(grep '^jax==' requirements.txt | cut -d= -f3)' &&
  python -m launch.main --config=$CONFIG --workdir=$WORKDIR"
