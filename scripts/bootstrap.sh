#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with samtriton and
# everything export, serving and the tests need, plus the real MobileSAM test checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.samtriton-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # torch first, pinned: this version is the local CPU build; anything looser downloads GBs.
  python -m pip install -q torch==2.13.0
  python -m pip install -q -e '.[export,serve,test]'
  echo "$want" > "$stamp"
fi
python scripts/fetch_test_checkpoint.py >/dev/null
