#!/usr/bin/env bash
# Install memchat and everything it needs into .venv, then run the server on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_project .
exec .venv/bin/memchat serve "$@"
