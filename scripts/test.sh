#!/usr/bin/env bash
# Install memchat with its test needs into .venv, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# The browser tests drive Debian's chromium through Playwright (which downloads no browser);
# the proxy test runs the scale-out profile's nginx config.
if [ ! -x /usr/bin/chromium ] || ! command -v nginx >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium nginx-light
fi
install_project '.[test]'
.venv/bin/ruff check server memory models tests
.venv/bin/mypy
.venv/bin/pytest "$@"
