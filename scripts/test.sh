#!/usr/bin/env bash
# The test suite: real MobileSAM weights, real embedded tritonserver, reference parity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -ra "$@"
