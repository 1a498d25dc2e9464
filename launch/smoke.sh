#!/usr/bin/env bash
# The CPU smoke run: sets up .venv if missing, trains every stage of configs/smoke.py on the
# embedded ToyWorld data into ${WORKDIR:-runs/smoke}, and prints the evaluation table.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
WORKDIR=${WORKDIR:-runs/smoke}
python -m launch.main --config=configs/smoke.py --workdir="$WORKDIR" "$@"
