#!/usr/bin/env bash
# Sets up .venv if missing, installs requirements.txt, runs the test suite.
# Usage: bash tests/run.sh [pytest args]   (slow tests: bash tests/run.sh -m slow)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
python -m pytest -q "$@"
