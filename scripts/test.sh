#!/usr/bin/env bash
# Install memchat with its test needs into .venv, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# The browser tests drive Debian's chromium through Playwright (which downloads no browser).
if [ ! -x /usr/bin/chromium ]; then
    apt-get update && apt-get install -y chromium
fi
install_project '.[test]'
.venv/bin/ruff check server memory models tests
.venv/bin/mypy
.venv/bin/pytest "$@"
