#!/usr/bin/env bash
# The test suite: real MobileSAM weights, real embedded tritonserver, reference parity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# A real nginx for the scale-out proxy tests (Debian's package); where it cannot be installed
# (not root, no apt-get) those tests are skipped and say why.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx) \
    >/dev/null 2>&1 || echo "nginx could not be installed; the nginx tests will be skipped"
fi
# Debian's chromium and its chromedriver for the annotation app's browser tests (Selenium);
# where they cannot be installed those tests are skipped and say why.
if { [ ! -x /usr/bin/chromedriver ] || ! command -v chromium >/dev/null 2>&1; } && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver) >/dev/null 2>&1 || echo "chromium could not be installed; the browser tests will be skipped"
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -ra "$@"
