#!/usr/bin/env bash
# The test suite: real MobileSAM weights, real embedded tritonserver, reference parity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Debian's tools the tests drive: a real nginx (scale-out proxy tests), chromium and its
# chromedriver (the annotation app's browser tests). As root they are installed, and a failed
# install fails the run saying what is missing. Without root or apt-get the tests that need
# them are skipped, except in CI (CI=true), where a missing tool fails the run.
debian=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || debian+=(nginx)
{ [ -x /usr/bin/chromedriver ] && command -v chromium >/dev/null 2>&1; } || debian+=(chromium chromium-driver)
# prometheus and promtool: tests/test_metrics.py fails (never skips) without them, saying so.
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || debian+=(prometheus)
if [ ${#debian[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${debian[@]}"; } >/tmp/samtriton-apt.log 2>&1; then
      tail -n 20 /tmp/samtriton-apt.log >&2
      echo "scripts/test.sh: could not install ${debian[*]} (apt-get failed, log above)" >&2
      exit 1
    fi
  elif [ "${CI:-}" = true ]; then
    echo "scripts/test.sh: missing ${debian[*]}, and no root or apt-get to install them" >&2
    exit 1
  else
    echo "not installed: ${debian[*]} (needs root and apt-get); the tests that use them are skipped"
  fi
fi
# The real Label Studio for tests/test_label_studio.py, in its own virtualenv (its pins must
# not touch .venv's), with SAMTRITON_TEST_LABEL_STUDIO=1. Opt-in: on a fresh clone it costs
# ~260 s (install 189 s, start 55 s, test 13 s; 2-core machine), over the two minutes CI gives it.
label_studio=1.23.2
if [ "${SAMTRITON_TEST_LABEL_STUDIO:-}" = 1 ] \
    && [ "$(cat .venv-ls/.samtriton-installed 2>/dev/null)" != "$label_studio" ]; then
  "${PYTHON:-python3}" -m venv .venv-ls
  .venv-ls/bin/python -m pip install -q "label-studio==$label_studio"
  echo "$label_studio" > .venv-ls/.samtriton-installed
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -ra "$@"
